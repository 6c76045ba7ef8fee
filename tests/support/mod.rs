//! What the black-box tests share: the real agent as a child process (OS-chosen
//! ports read back from its JSON log, its log lines and size, its memory), HTTP
//! exchanges, and a development PKI.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test files; tests fail loudly

pub mod cluster;
pub mod otlp;
pub mod root;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{ProduceRequest, Record};

pub const AGENT: &str = env!("CARGO_BIN_EXE_proglog-agent");

/// The agent binary the tests run: [`AGENT`], or the one `PROGLOG_TEST_AGENT`
/// names (to see a test fail against an older build).
pub fn agent_binary() -> String {
    std::env::var("PROGLOG_TEST_AGENT").unwrap_or_else(|_| AGENT.to_owned())
}

/// Resource limits (soft and hard) of an agent process, as `ulimit` sets them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rlimits {
    /// Open files (`ulimit -n`).
    pub nofile: Option<u64>,
    /// Largest file the process may write, in bytes (`ulimit -f`). SIGXFSZ is
    /// ignored, so a write beyond it fails with `EFBIG` (a file that cannot grow)
    /// instead of killing the process.
    pub fsize: Option<u64>,
}

impl Rlimits {
    /// Runs in the child between fork and exec.
    fn apply(self) -> std::io::Result<()> {
        let set = |resource, value: u64| {
            let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
            // SAFETY: setrlimit reads the struct it is given.
            if unsafe { libc::setrlimit(resource, &limit) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        if let Some(nofile) = self.nofile {
            set(libc::RLIMIT_NOFILE, nofile)?;
        }
        if let Some(fsize) = self.fsize {
            // SAFETY: an ignored disposition survives exec; nothing else is touched.
            unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
            set(libc::RLIMIT_FSIZE, fsize)?;
        }
        Ok(())
    }
}

/// A running agent; killed on drop if the test did not stop it.
pub struct Agent {
    pub child: Child,
    pub rpc: SocketAddr,
    /// The gossip (UDP) address.
    pub gossip: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    /// The agent's log lines (JSON) up to "serving".
    pub startup: Vec<String>,
    /// The agent's log lines (JSON) after "serving".
    pub log: std::sync::mpsc::Receiver<String>,
    /// Bytes the agent has logged so far.
    logged: Arc<AtomicU64>,
}

impl Agent {
    /// Starts the agent on `data_dir` with OS-chosen ports, and waits until it
    /// says it is serving.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_limited(data_dir, extra, None)
    }

    /// [`Agent::start`], with the agent's open-file limit (soft and hard) set to
    /// `nofile` if given, as `ulimit -n` would.
    pub fn start_limited(data_dir: &Path, extra: &[&str], nofile: Option<u64>) -> Self {
        Self::start_with(None, data_dir, extra, Rlimits { nofile, ..Rlimits::default() })
    }

    /// [`Agent::start`] inside the network namespace `netns` if given (`ip netns
    /// exec`), under resource `limits`.
    fn start_with(netns: Option<&str>, data_dir: &Path, extra: &[&str], limits: Rlimits) -> Self {
        let mut args = vec!["--data-dir", data_dir.to_str().unwrap(), "--log-format", "json"];
        for (flag, value) in [
            ("--node-name", "black-box"),
            ("--bind-addr", "127.0.0.1:0"),
            ("--rpc-port", "0"),
            ("--http-addr", "127.0.0.1:0"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, &agent_binary()]);
                command
            }
            None => Command::new(agent_binary()),
        };
        command.args(args).args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
        if limits != Rlimits::default() {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit and signal, which are async-signal-safe, run
            // in the child.
            unsafe {
                command.pre_exec(move || limits.apply());
            }
        }
        let mut child = command.spawn().unwrap();
        let logged = Arc::new(AtomicU64::new(0));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut startup = Vec::new();
        let serving = loop {
            let line = lines.next().expect("agent exited before serving").unwrap();
            logged.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
            if line.contains("\"msg\":\"serving\"") {
                break line;
            }
            startup.push(line);
        };
        // Keep draining the log so the agent never blocks on a full pipe; tests
        // may read what it says.
        let (log_tx, log) = std::sync::mpsc::channel();
        let counter = Arc::clone(&logged);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                counter.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
                let _ = log_tx.send(line);
            }
        });
        let field = |name: &str| -> Option<SocketAddr> {
            let start = serving.find(&format!("\"{name}\":\""))? + name.len() + 4;
            serving[start..].split('"').next()?.parse().ok()
        };
        Self {
            rpc: field("rpc_addr").unwrap(),
            gossip: field("gossip_addr").unwrap(),
            http_addr: field("http_addr"),
            child,
            startup,
            log,
            logged,
        }
    }

    /// Waits until the agent logs a configuration of `voters` voters and no
    /// learner (consuming its log lines up to it).
    pub fn wait_for_voters(&self, voters: usize, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.log.recv_timeout(left).expect("no such configuration in time");
            let voter_list = line.split("\"voters\":\"[").nth(1).and_then(|rest| rest.split(']').next());
            if line.contains("configuration changed")
                && line.contains("\"learners\":\"[]\"")
                && voter_list.is_some_and(|list| list.split(',').count() == voters)
            {
                return;
            }
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    /// SIGTERM, then the exit status. Waits off the runtime, so this test's
    /// clients can still answer the agent's GOAWAY and hang up.
    pub async fn terminate(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        tokio::task::spawn_blocking(move || self.child.wait().unwrap()).await.unwrap()
    }

    /// kill -9.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// kill -9 the agent of `agents` whose RPC address is `rpc_addr`, and drops
    /// it from `agents`.
    pub fn kill_serving(agents: &mut Vec<Agent>, rpc_addr: &str) {
        let position = agents.iter().position(|agent| agent.rpc.to_string() == rpc_addr);
        agents.remove(position.expect("an agent serves that address")).kill();
    }

    pub fn http(&self) -> SocketAddr {
        self.http_addr.expect("the HTTP API is enabled")
    }

    pub async fn grpc(&self) -> LogClient<tonic::transport::Channel> {
        LogClient::connect(format!("http://{}", self.rpc)).await.unwrap()
    }

    /// Bytes the agent has written to its log so far.
    pub fn logged_bytes(&self) -> u64 {
        self.logged.load(Ordering::Relaxed)
    }

    /// The agent's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_number("VmHWM:") * 1024
    }

    /// Restarts the peak measure (VmHWM) from the resident memory now, which it
    /// returns: an attack's peak is then measured from here.
    pub fn reset_peak_rss(&self) -> u64 {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
        self.rss()
    }

    /// The agent's resident memory now (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        self.status_number("VmRSS:") * 1024
    }

    /// The agent's threads now.
    pub fn threads(&self) -> u64 {
        self.status_number("Threads:")
    }

    /// The number a `/proc/<pid>/status` line gives (memory in KiB).
    fn status_number(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|line| line.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// CPU time (user + system) the agent has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces): utime and stime
        // are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let ticks_used: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks_used as f64 / ticks)
    }

    /// Waits (up to 30 s) for a log line containing every one of `fields`.
    pub fn wait_for_line(&self, fields: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.log.recv_timeout(left).unwrap_or_else(|_| panic!("no log line with {fields:?}"));
            if fields.iter().all(|field| line.contains(field)) {
                return line;
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 exchange over any stream: (status, body).
pub fn exchange(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    exchange(stream, method, path, body)
}

pub fn produce(value: &str) -> ProduceRequest {
    ProduceRequest {
        record: Some(Record { value: value.to_owned().into(), ..Default::default() }),
        ..Default::default()
    }
}

/// Mutual-TLS material for one test.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        proglog_certs::write_dev_set(dir.path()).unwrap();
        Self { dir }
    }

    /// A PKI whose server certificate also names `sans` (agents on other
    /// addresses dial each other by them).
    pub fn with_sans(sans: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<&str> = ["localhost", "127.0.0.1"].iter().chain(sans).copied().collect();
        proglog_certs::write_dev_set_for(dir.path(), &all).unwrap();
        Self { dir }
    }

    /// A PKI with a certificate per node of `nodes` too (for
    /// `--peer-tls-require-node-name`).
    pub fn with_nodes(nodes: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        proglog_certs::write_dev_set_with_nodes(dir.path(), &["localhost", "127.0.0.1"], nodes).unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts cluster member `name` (its data under `data_dir`) with the node
    /// certificate of `certified` (its own, normally) as server and peer
    /// certificate, requiring peers' certificates to name their nodes, and
    /// `extra` flags.
    pub fn start_named_member(&self, data_dir: &Path, name: &str, certified: &str, extra: &[&str]) -> Agent {
        let file = |file: &str| self.path(file).to_str().unwrap().to_owned();
        let (cert, key) = (file(&format!("{certified}.pem")), file(&format!("{certified}-key.pem")));
        let (ca, model, policy, gossip) =
            (file("ca.pem"), file("model.conf"), file("policy.csv"), file("gossip.key"));
        let mut args = vec![
            "--node-name",
            name,
            "--server-tls-cert-file",
            &cert,
            "--server-tls-key-file",
            &key,
            "--server-tls-ca-file",
            &ca,
            "--acl-model-file",
            &model,
            "--acl-policy-file",
            &policy,
            "--gossip-key-file",
            &gossip,
            "--peer-tls-cert-file",
            &cert,
            "--peer-tls-key-file",
            &key,
            "--peer-tls-ca-file",
            &ca,
            "--peer-tls-require-node-name",
        ];
        args.extend_from_slice(extra);
        Agent::start(&data_dir.join(name), &args)
    }

    /// Starts an agent on `data_dir` with mutual TLS and the ACL of this PKI,
    /// and `extra` flags.
    pub fn start_agent(&self, data_dir: &Path, extra: &[&str]) -> Agent {
        self.start_agent_in(None, data_dir, extra)
    }

    /// Starts cluster member `name` (its data under `data_dir`), presenting the
    /// root certificate to its peers (the ACL lets root replicate), inside the
    /// network namespace `netns` if given, with `extra` flags.
    pub fn start_member(&self, netns: Option<&str>, data_dir: &Path, name: &str, extra: &[&str]) -> Agent {
        self.start_member_limited(netns, data_dir, name, extra, Rlimits::default())
    }

    /// [`Pki::start_member`] under resource `limits`.
    pub fn start_member_limited(
        &self,
        netns: Option<&str>,
        data_dir: &Path,
        name: &str,
        extra: &[&str],
        limits: Rlimits,
    ) -> Agent {
        let (cert, key, ca) =
            (self.path("root-client.pem"), self.path("root-client-key.pem"), self.path("ca.pem"));
        let mut args = vec![
            "--node-name",
            name,
            "--peer-tls-cert-file",
            cert.to_str().unwrap(),
            "--peer-tls-key-file",
            key.to_str().unwrap(),
            "--peer-tls-ca-file",
            ca.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.start_agent_with(netns, &data_dir.join(name), &args, limits)
    }

    /// [`Pki::start_agent`], inside the network namespace `netns` if given.
    pub fn start_agent_in(&self, netns: Option<&str>, data_dir: &Path, extra: &[&str]) -> Agent {
        self.start_agent_with(netns, data_dir, extra, Rlimits::default())
    }

    fn start_agent_with(
        &self,
        netns: Option<&str>,
        data_dir: &Path,
        extra: &[&str],
        limits: Rlimits,
    ) -> Agent {
        let files = [
            ("--server-tls-cert-file", "server.pem"),
            ("--server-tls-key-file", "server-key.pem"),
            ("--server-tls-ca-file", "ca.pem"),
            ("--acl-model-file", "model.conf"),
            ("--acl-policy-file", "policy.csv"),
            ("--gossip-key-file", "gossip.key"),
        ]
        .map(|(flag, file)| (flag, self.path(file).to_str().unwrap().to_owned()));
        let mut args: Vec<&str> = files.iter().flat_map(|(flag, path)| [*flag, path.as_str()]).collect();
        args.extend_from_slice(extra);
        Agent::start_with(netns, data_dir, &args, limits)
    }

    /// A rustls client config trusting the CA, presenting `client` (e.g. "root")
    /// or no certificate, offering `alpn`.
    pub fn client_config(&self, client: Option<&str>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let identity = client.map(|name| {
            proglog_tls::Identity::new(
                self.path(&format!("{name}-client.pem")),
                self.path(&format!("{name}-client-key.pem")),
            )
        });
        proglog_tls::client_config(&[self.path("ca.pem")], identity.as_ref(), alpn).unwrap()
    }

    /// A TLS HTTP exchange presenting `client` (e.g. "root") or no certificate.
    pub fn https(
        &self,
        addr: SocketAddr,
        client: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        self.https_with(addr, client, method, path, &[], body)
    }

    /// [`Pki::https`] sending `headers` too.
    pub fn https_with(
        &self,
        addr: SocketAddr,
        client: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        use rustls::pki_types::ServerName;
        let server_name = ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(self.client_config(client, &[]), server_name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        let body = body.unwrap_or("");
        let headers: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        // A rejected handshake surfaces here, as an error or an empty response.
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        Some((status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    }

    /// A gRPC client over mutual TLS as `client` (connecting on first use).
    pub fn grpc(&self, addr: SocketAddr, client: &str) -> LogClient<tonic::transport::Channel> {
        self.grpc_issued_by(addr, self, client)
    }

    /// A channel over mutual TLS as `client` (connecting on first use).
    pub fn channel(&self, addr: SocketAddr, client: &str) -> tonic::transport::Channel {
        self.channel_issued_by(addr, self, client)
    }

    /// A gRPC client trusting this PKI's CA (the agent's) and presenting the
    /// certificate of `client` that `issuer`'s CA signed (a peer's CA, say).
    pub fn grpc_issued_by(
        &self,
        addr: SocketAddr,
        issuer: &Pki,
        client: &str,
    ) -> LogClient<tonic::transport::Channel> {
        LogClient::new(self.channel_issued_by(addr, issuer, client))
    }

    /// A gRPC client trusting this PKI's CA that presents no certificate.
    pub fn grpc_without_certificate(&self, addr: SocketAddr) -> LogClient<tonic::transport::Channel> {
        let config = proglog_tls::client_config(&[self.path("ca.pem")], None, &[b"h2"]).unwrap();
        let connector = proglog_tls::Connector::tls(config, "localhost").unwrap();
        let endpoint = connector.endpoint(&addr.to_string()).unwrap();
        LogClient::new(connector.connect_lazy(&endpoint))
    }

    fn channel_issued_by(&self, addr: SocketAddr, issuer: &Pki, client: &str) -> tonic::transport::Channel {
        let identity = proglog_tls::Identity::new(
            issuer.path(&format!("{client}-client.pem")),
            issuer.path(&format!("{client}-client-key.pem")),
        );
        let config = proglog_tls::client_config(&[self.path("ca.pem")], Some(&identity), &[b"h2"]).unwrap();
        let connector = proglog_tls::Connector::tls(config, "localhost").unwrap();
        let endpoint = connector.endpoint(&addr.to_string()).unwrap();
        connector.connect_lazy(&endpoint)
    }
}
