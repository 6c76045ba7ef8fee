//! Peers measured in the cluster bench's own run: NATS JetStream with three
//! replicas and a three-member etcd, each a real server process on 127.0.0.1.
//!
//! The servers are Debian's `nats-server` and `etcd-server`: found on `PATH`, or
//! installed with `apt-get` when the bench runs as root (set
//! `PROGLOG_BENCH_NO_INSTALL` to never install); otherwise the peer is skipped
//! with the reason. The clients are small ones written here against the servers'
//! documented protocols — NATS's text protocol (`PUB` with a reply subject, on
//! which JetStream acknowledges each stored message) and etcd's
//! `etcdserverpb.KV/Put` over gRPC — so the bench pulls in no client library.

use std::collections::VecDeque;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::{Produced, WINDOW, calls};

/// How long a peer may take to form its cluster.
const FORMING: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_millis(100);
/// The JetStream stream (and its one subject) the producers publish to.
const STREAM: &str = "bench";

/// The server binary `binary`, installing Debian's `package` if it is missing
/// and this process may: `Err` says why the peer cannot be measured.
pub fn find_or_install(binary: &str, package: &str) -> Result<PathBuf, String> {
    if let Some(path) = on_path(binary) {
        return Ok(path);
    }
    let why = format!("`{binary}` is not installed (Debian package `{package}`)");
    if std::env::var_os("PROGLOG_BENCH_NO_INSTALL").is_some() {
        return Err(format!("{why}; PROGLOG_BENCH_NO_INSTALL is set"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || on_path("apt-get").is_none() {
        return Err(format!("{why}, and installing it needs root and apt-get"));
    }
    eprintln!("installing {package} with apt-get…");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let updated = || Command::new("apt-get").args(["update", "-q"]).stdout(Stdio::null()).status().is_ok();
    let installed = install() || (updated() && install());
    if !installed {
        return Err(format!("{why}, and `apt-get install {package}` failed"));
    }
    on_path(binary).ok_or_else(|| format!("{why}: installed, but it is not on PATH"))
}

fn on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(binary)).find(|candidate| candidate.is_file())
}

/// A port free on 127.0.0.1 a moment ago (the servers bind it themselves).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Server processes, killed (and reaped) when dropped, and killed by the kernel
/// if this process dies first.
struct Processes(Vec<Child>);

impl Processes {
    fn spawn(&mut self, command: &mut Command, log: &Path) -> Result<()> {
        use std::os::unix::process::CommandExt as _;
        let out = fs::File::create(log)?;
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.0.push(child);
        Ok(())
    }

    /// Fails if a server exited (its log says why).
    fn check(&mut self, logs: &Path) -> Result<()> {
        for child in &mut self.0 {
            if let Some(status) = child.try_wait()? {
                bail!("a server exited ({status}); see the logs in {}", logs.display());
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Retries `attempt` every [`RETRY`] until it succeeds or [`FORMING`] passes.
async fn until_formed<T, F, Fut>(
    what: &str,
    servers: &mut Processes,
    logs: &Path,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + FORMING;
    loop {
        servers.check(logs)?;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context(format!("{what}: not within {FORMING:?}")));
            }
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    }
}

// ---------------------------------------------------------------- NATS

/// A three-server NATS cluster with JetStream (file storage) and a stream of
/// three replicas, running until dropped.
pub struct NatsCluster {
    ports: Vec<u16>,
    _servers: Processes,
}

impl NatsCluster {
    /// Starts the servers (data and logs under `dir`) and creates the stream.
    pub async fn start(binary: &Path, dir: &Path) -> Result<Self> {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
        let mut servers = Processes(Vec::new());
        for i in 0..3 {
            let others: Vec<String> =
                (0..3).filter(|&j| j != i).map(|j| format!("nats-route://127.0.0.1:{}", routes[j])).collect();
            let config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: bench, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                ports[i],
                dir.join(format!("n{i}")).display(),
                routes[i],
                others.join(", ")
            );
            let path = dir.join(format!("n{i}.conf"));
            fs::write(&path, config)?;
            servers.spawn(Command::new(binary).arg("-c").arg(&path), &dir.join(format!("n{i}.log")))?;
        }
        let create =
            format!(r#"{{"name":"{STREAM}","subjects":["{STREAM}"],"storage":"file","num_replicas":3}}"#);
        let port = ports[0];
        until_formed("the JetStream stream with 3 replicas", &mut servers, dir, || {
            let create = create.clone();
            async move {
                let mut conn = Nats::connect(port).await?;
                conn.subscribe("_INBOX.create").await?;
                conn.publish(&format!("$JS.API.STREAM.CREATE.{STREAM}"), "_INBOX.create", create.as_bytes())
                    .await?;
                conn.flush().await?;
                let (_, reply) = tokio::time::timeout(Duration::from_secs(5), conn.next_message()).await??;
                let reply = String::from_utf8_lossy(&reply);
                ensure!(!reply.contains("\"error\""), "creating the stream: {reply}");
                Ok(())
            }
        })
        .await?;
        Ok(Self { ports, _servers: servers })
    }

    /// `producers` connections (spread over the servers), each publishing its
    /// share of `total` values with up to [`WINDOW`] unacknowledged; per-message
    /// latency from writing the `PUB` to reading JetStream's acknowledgement.
    pub async fn publish(
        &self,
        producers: usize,
        pool: Arc<Vec<Bytes>>,
        total: u64,
        cap: Duration,
    ) -> Result<Produced> {
        let mut connections = Vec::with_capacity(producers);
        for producer in 0..producers {
            let mut conn = Nats::connect(self.ports[producer % self.ports.len()]).await?;
            conn.subscribe(&format!("_INBOX.p{producer}.*")).await?;
            connections.push(conn);
        }
        let start = Instant::now();
        let tasks: Vec<_> = connections
            .into_iter()
            .enumerate()
            .map(|(producer, conn)| {
                let pool = Arc::clone(&pool);
                let count =
                    total / producers as u64 + u64::from((producer as u64) < total % producers as u64);
                tokio::spawn(tokio::time::timeout(cap, publish(conn, producer, pool, count)))
            })
            .collect();
        let mut produced = Produced { acked: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
        for task in tasks {
            let latencies =
                task.await?.with_context(|| format!("NATS did not acknowledge within {cap:?}"))??;
            produced.acked += latencies.len() as u64;
            produced.latencies.extend(latencies);
        }
        produced.elapsed = start.elapsed();
        Ok(produced)
    }
}

/// One producer: a writer task publishing under the window, this task reading
/// the acknowledgements (which come back in publish order on one connection).
async fn publish(conn: Nats, producer: usize, pool: Arc<Vec<Bytes>>, count: u64) -> Result<Vec<u64>> {
    let Nats { mut reader, mut writer } = conn;
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let sent_at = Arc::new(std::sync::Mutex::new(VecDeque::with_capacity(WINDOW)));
    let sender = tokio::spawn({
        let (window, sent_at) = (Arc::clone(&window), Arc::clone(&sent_at));
        async move {
            for i in 0..count {
                let permit = match window.try_acquire() {
                    Ok(permit) => permit,
                    Err(_) => {
                        writer.flush().await?;
                        window.acquire().await?
                    }
                };
                permit.forget();
                sent_at.lock().unwrap_or_else(|e| e.into_inner()).push_back(Instant::now());
                let value = &pool[(producer + i as usize) % pool.len()];
                write_pub(&mut writer, STREAM, &format!("_INBOX.p{producer}.{i}"), value).await?;
            }
            writer.flush().await?;
            anyhow::Ok(writer)
        }
    });
    let mut latencies = Vec::with_capacity(count as usize);
    while (latencies.len() as u64) < count {
        let (_, ack) = read_message(&mut reader).await?;
        ensure!(
            !ack.windows(7).any(|w| w == b"\"error\""),
            "JetStream refused: {}",
            String::from_utf8_lossy(&ack)
        );
        let sent = sent_at.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        latencies.push(sent.context("an acknowledgement of nothing")?.elapsed().as_nanos() as u64);
        window.add_permits(1);
    }
    drop(sender.await??);
    Ok(latencies)
}

/// A client connection speaking NATS's text protocol (no headers, no echo).
struct Nats {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
}

impl Nats {
    async fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut conn = Self { reader: BufReader::new(read), writer: BufWriter::new(write) };
        let info = read_line(&mut conn.reader).await?;
        ensure!(info.starts_with("INFO "), "not a NATS server: {info:?}");
        conn.writer
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"echo\":false,\"protocol\":1}\r\nPING\r\n")
            .await?;
        conn.flush().await?;
        loop {
            match read_line(&mut conn.reader).await?.as_str() {
                "PONG" => return Ok(conn),
                line if line.starts_with("-ERR") => bail!("NATS refused the connection: {line}"),
                _ => {}
            }
        }
    }

    async fn subscribe(&mut self, subject: &str) -> Result<()> {
        self.writer.write_all(format!("SUB {subject} 1\r\n").as_bytes()).await?;
        Ok(())
    }

    async fn publish(&mut self, subject: &str, reply: &str, payload: &[u8]) -> Result<()> {
        write_pub(&mut self.writer, subject, reply, payload).await
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(self.writer.flush().await?)
    }

    async fn next_message(&mut self) -> Result<(String, Vec<u8>)> {
        read_message(&mut self.reader).await
    }
}

async fn write_pub(
    writer: &mut BufWriter<OwnedWriteHalf>,
    subject: &str,
    reply: &str,
    payload: &[u8],
) -> Result<()> {
    writer.write_all(format!("PUB {subject} {reply} {}\r\n", payload.len()).as_bytes()).await?;
    writer.write_all(payload).await?;
    writer.write_all(b"\r\n").await?;
    Ok(())
}

async fn read_line(reader: &mut BufReader<OwnedReadHalf>) -> Result<String> {
    let mut line = String::new();
    ensure!(reader.read_line(&mut line).await? > 0, "the NATS server closed the connection");
    Ok(line.trim_end().to_owned())
}

/// The next `MSG` (subject, payload), skipping the server's `PING`s (a run is
/// far shorter than the two unanswered pings after which it disconnects).
async fn read_message(reader: &mut BufReader<OwnedReadHalf>) -> Result<(String, Vec<u8>)> {
    loop {
        let line = read_line(reader).await?;
        if let Some(rest) = line.strip_prefix("MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let fields: Vec<&str> = rest.split(' ').collect();
            let bytes: usize = fields.last().context("an empty MSG line")?.parse()?;
            let mut payload = vec![0; bytes + 2];
            reader.read_exact(&mut payload).await?;
            payload.truncate(bytes);
            return Ok((fields[0].to_owned(), payload));
        }
        ensure!(!line.starts_with("-ERR"), "NATS: {line}");
    }
}

// ---------------------------------------------------------------- etcd

/// etcd's `PutRequest` (`etcdserverpb`), the two fields used here.
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcd's `PutResponse`: nothing of it is needed.
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "2")]
    member_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(uint64, tag = "4")]
    leader: u64,
}

async fn grpc_call<Req, Resp>(channel: &Channel, path: &'static str, request: Req) -> Result<Resp>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let response = grpc.unary(tonic::Request::new(request), PathAndQuery::from_static(path), codec).await?;
    Ok(response.into_inner())
}

/// A three-member etcd cluster (its defaults: WAL fdatasync before every
/// acknowledged put), running until dropped.
pub struct EtcdCluster {
    leader: SocketAddr,
    _servers: Processes,
}

impl EtcdCluster {
    /// Starts the members (data and logs under `dir`) and waits for a leader.
    pub async fn start(binary: &Path, dir: &Path) -> Result<Self> {
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
        let peers: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
        let cluster: Vec<String> = (0..3).map(|i| format!("e{i}=http://127.0.0.1:{}", peers[i])).collect();
        let mut servers = Processes(Vec::new());
        for i in 0..3 {
            let client = format!("http://127.0.0.1:{}", clients[i]);
            let peer = format!("http://127.0.0.1:{}", peers[i]);
            let mut command = Command::new(binary);
            command
                .arg(format!("--name=e{i}"))
                .arg(format!("--data-dir={}", dir.join(format!("e{i}")).display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster={}", cluster.join(",")))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=proglog-bench");
            servers.spawn(&mut command, &dir.join(format!("e{i}.log")))?;
        }
        let addrs: Vec<SocketAddr> =
            clients.iter().map(|&port| SocketAddr::from(([127, 0, 0, 1], port))).collect();
        let leader = until_formed("an etcd leader", &mut servers, dir, || {
            let addrs = addrs.clone();
            async move {
                for addr in addrs {
                    let channel = etcd_channel(addr).await?;
                    let status: StatusResponse =
                        grpc_call(&channel, "/etcdserverpb.Maintenance/Status", StatusRequest {}).await?;
                    let me = status.header.context("a status without header")?.member_id;
                    if status.leader != 0 && status.leader == me {
                        return Ok(addr);
                    }
                }
                bail!("no member leads yet")
            }
        })
        .await?;
        Ok(Self { leader, _servers: servers })
    }

    /// Sequential puts (a new key each, the pool's values) from
    /// `producers` connections to the leader, for `duration`.
    pub async fn put(&self, producers: usize, pool: Arc<Vec<Bytes>>, duration: Duration) -> Result<Produced> {
        let mut channels = Vec::with_capacity(producers);
        for _ in 0..producers {
            channels.push(etcd_channel(self.leader).await?);
        }
        calls(channels, duration, move |channel, i| {
            let request =
                PutRequest { key: format!("k{i:012}").into_bytes(), value: pool[i % pool.len()].to_vec() };
            async move {
                let _: PutResponse = grpc_call(&channel, "/etcdserverpb.KV/Put", request).await?;
                Ok(channel)
            }
        })
        .await
    }
}

async fn etcd_channel(addr: SocketAddr) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?.connect().await?)
}
