//! Black-box tests of the real `proglog-agent` binary, as a user runs it: temp
//! data dirs, ports chosen by the OS (read back from the agent's JSON log), HTTP
//! and gRPC clients, signals, kill -9, restarts.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{ConsumeRequest, ProduceRequest, Record};
use tonic::Code;

const AGENT: &str = env!("CARGO_BIN_EXE_proglog-agent");

/// A running agent; killed on drop if the test did not stop it.
struct Agent {
    child: Child,
    rpc: SocketAddr,
    http_addr: Option<SocketAddr>,
    /// The agent's log lines (JSON) after "serving".
    log: std::sync::mpsc::Receiver<String>,
}

impl Agent {
    /// Starts the agent on `data_dir` with OS-chosen ports, and waits until it
    /// says it is serving.
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--node-name",
            "black-box",
            "--log-format",
            "json",
        ];
        for (flag, value) in
            [("--bind-addr", "127.0.0.1:0"), ("--rpc-port", "0"), ("--http-addr", "127.0.0.1:0")]
        {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        let mut child = Command::new(AGENT)
            .args(args)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let serving = loop {
            let line = lines.next().expect("agent exited before serving").unwrap();
            if line.contains("\"msg\":\"serving\"") {
                break line;
            }
        };
        // Keep draining the log so the agent never blocks on a full pipe; tests
        // may read what it says.
        let (log_tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = log_tx.send(line);
            }
        });
        let field = |name: &str| -> Option<SocketAddr> {
            let start = serving.find(&format!("\"{name}\":\""))? + name.len() + 4;
            serving[start..].split('"').next()?.parse().ok()
        };
        Self { rpc: field("rpc_addr").unwrap(), http_addr: field("http_addr"), child, log }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    /// SIGTERM, then the exit status. Waits off the runtime, so this test's
    /// clients can still answer the agent's GOAWAY and hang up.
    async fn terminate(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        tokio::task::spawn_blocking(move || self.child.wait().unwrap()).await.unwrap()
    }

    /// kill -9.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn http(&self) -> SocketAddr {
        self.http_addr.expect("the HTTP API is enabled")
    }

    async fn grpc(&self) -> LogClient<tonic::transport::Channel> {
        LogClient::connect(format!("http://{}", self.rpc)).await.unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 exchange over any stream: (status, body).
fn exchange(mut stream: impl Read + Write, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
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

fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    exchange(TcpStream::connect(addr).unwrap(), method, path, body)
}

fn produce(value: &str) -> ProduceRequest {
    ProduceRequest { record: Some(Record { value: value.to_owned().into(), ..Default::default() }) }
}

#[tokio::test]
async fn http_and_grpc_serve_one_log_and_metrics_count_calls() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    // The book's chapter-1 API: POST / and GET / with a JSON body (curl -d style).
    assert_eq!(
        http(agent.http(), "POST", "/", Some(r#"{"record":{"value":"TGV0J3MgR28gIzEK"}}"#)),
        (200, r#"{"offset":0}"#.into())
    );
    assert_eq!(
        http(agent.http(), "POST", "/records", Some(r#"{"record":{"value":"aGk="}}"#)),
        (200, r#"{"offset":1}"#.into())
    );
    let (status, body) = http(agent.http(), "GET", "/", Some(r#"{"offset":0}"#));
    assert_eq!((status, body.as_str()), (200, r#"{"record":{"offset":0,"value":"TGV0J3MgR28gIzEK"}}"#));
    let (status, body) = http(agent.http(), "GET", "/records/1", None);
    assert_eq!((status, body.as_str()), (200, r#"{"record":{"offset":1,"value":"aGk="}}"#));
    let (status, body) = http(agent.http(), "GET", "/records/7", None);
    assert_eq!((status, body.as_str()), (404, r#"{"error":"offset out of range: 7"}"#));
    assert_eq!(http(agent.http(), "POST", "/", Some("{not json")).0, 400);
    assert_eq!(http(agent.http(), "POST", "/", Some(r#"{"record":{"value":"***"}}"#)).0, 400);
    assert_eq!(http(agent.http(), "GET", "/healthz", None).0, 200);
    assert_eq!(http(agent.http(), "GET", "/readyz", None).0, 200);

    // gRPC sees what HTTP wrote.
    let mut client = agent.grpc().await;
    let record = client.consume(ConsumeRequest { offset: 0 }).await.unwrap().into_inner().record.unwrap();
    assert_eq!(record.value, "Let's Go #1\n");
    let (_, metrics) = http(agent.http(), "GET", "/metrics", None);
    assert!(metrics.contains(r#"proglog_rpc_requests_total{method="Consume",code="OK"} 1"#), "{metrics}");
    assert!(metrics.contains("proglog_log_highest_offset 1"), "{metrics}");
    client.consume(ConsumeRequest { offset: 9 }).await.unwrap_err();
    let (_, metrics) = http(agent.http(), "GET", "/metrics", None);
    assert!(
        metrics.contains(r#"proglog_rpc_requests_total{method="Consume",code="OUT_OF_RANGE"} 1"#),
        "{metrics}"
    );
    drop(client); // a connected client would hold the graceful shutdown for its grace period
    assert!(agent.terminate().await.success());
}

#[tokio::test]
async fn sigterm_exits_zero_and_a_restart_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let mut client = agent.grpc().await;
    for i in 0..20u64 {
        assert_eq!(client.produce(produce(&format!("record {i}"))).await.unwrap().into_inner().offset, i);
    }
    drop(client);
    assert_eq!(agent.terminate().await.code(), Some(0));

    let agent = Agent::start(dir.path(), &[]);
    let mut client = agent.grpc().await;
    for i in 0..20u64 {
        let record = client.consume(ConsumeRequest { offset: i }).await.unwrap().into_inner().record.unwrap();
        assert_eq!(record.value, format!("record {i}"));
    }
    assert_eq!(client.produce(produce("after restart")).await.unwrap().into_inner().offset, 20);
    drop(client);
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn kill_9_during_produces_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &["--fsync", "always"]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(agent.grpc().await);
    }
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    for (producer, mut client) in clients.into_iter().enumerate() {
        let acked_tx = acked_tx.clone();
        tokio::spawn(async move {
            for i in 0u64.. {
                let value = format!("{producer}-{i}");
                match client.produce(produce(&value)).await {
                    Ok(response) => {
                        if acked_tx.send((response.into_inner().offset, value)).is_err() {
                            return;
                        }
                    }
                    Err(_) => return, // the agent is gone
                }
            }
        });
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    while acked.len() < 300 {
        acked.push(acked_rx.recv().await.unwrap());
    }
    agent.kill(); // mid-stream: more produces are in flight
    while let Ok(late) = acked_rx.try_recv() {
        acked.push(late);
    }

    let agent = Agent::start(dir.path(), &[]);
    let mut client = agent.grpc().await;
    let highest = acked.iter().map(|(offset, _)| *offset).max().unwrap();
    for (offset, value) in &acked {
        let record =
            client.consume(ConsumeRequest { offset: *offset }).await.unwrap().into_inner().record.unwrap();
        assert_eq!(&record.value, value.as_str(), "acknowledged offset {offset}");
    }
    let next = client.produce(produce("next")).await.unwrap().into_inner().offset;
    assert!(next > highest, "next offset {next} must follow the acknowledged {highest}");
    // Dense: every offset below the next one is readable.
    for offset in 0..next {
        client.consume(ConsumeRequest { offset }).await.unwrap();
    }
    drop(client);
    assert_eq!(agent.terminate().await.code(), Some(0));
}

/// The `proglog` CLI against the agent, with stdin: (exit code, stdout).
async fn cli(args: &[&str], stdin: &str) -> (Option<i32>, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_proglog"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output =
        tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn the_cli_and_http_produce_and_consume_on_the_real_agent() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let addr = agent.rpc.to_string();
    assert_eq!(cli(&["--addr", &addr, "produce", "one", "two"], "").await, (Some(0), "0\n1\n".into()));
    assert_eq!(cli(&["--addr", &addr, "produce"], "three\nfour\n").await, (Some(0), "2\n3\n".into()));
    let (status, body) = http(agent.http(), "GET", "/records/2", None);
    assert_eq!((status, body.as_str()), (200, r#"{"record":{"offset":2,"value":"dGhyZWU="}}"#));
    http(agent.http(), "POST", "/records", Some(r#"{"record":{"value":"Zml2ZQ=="}}"#));
    let (code, out) = cli(&["--addr", &addr, "consume", "--offset", "1"], "").await;
    assert_eq!((code, out.as_str()), (Some(0), "two\nthree\nfour\nfive\n"));
    let (code, out) =
        cli(&["--addr", &addr, "--output", "json", "consume", "--offset", "4", "--count", "1"], "").await;
    assert_eq!((code, out.as_str()), (Some(0), "{\"offset\":4,\"value\":\"Zml2ZQ==\"}\n"));
    let (code, out) = cli(&["--addr", &addr, "servers"], "").await;
    assert_eq!(code, Some(0));
    assert!(out.starts_with("black-box ") && out.contains(&addr), "{out}");
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn each_request_gets_one_structured_debug_line() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &["--log-level", "debug"]);
    let mut client = agent.grpc().await;
    client.produce(produce("logged")).await.unwrap();
    client.consume(ConsumeRequest { offset: 5 }).await.unwrap_err();
    let wanted = [
        [r#""method":"Produce""#, r#""code":"OK""#, r#""offset":0"#],
        [r#""method":"Consume""#, r#""code":"OUT_OF_RANGE""#, r#""offset":5"#],
    ];
    for fields in wanted {
        let line = loop {
            let line = agent.log.recv_timeout(Duration::from_secs(10)).expect("a request line");
            if line.contains(r#""msg":"rpc""#) && line.contains(fields[0]) {
                break line;
            }
        };
        assert!(fields.iter().all(|field| line.contains(field)), "{line}");
        assert!(line.contains(r#""subject":"anonymous""#) && line.contains("duration_us"), "{line}");
    }
    drop(client);
    assert_eq!(agent.terminate().await.code(), Some(0));
}

/// The debug line above comes from a debug build; users run release builds, where
/// slog compiles out every level above its `release_max_level_*` feature. The
/// binary's package must keep all of them.
#[test]
fn release_builds_keep_debug_and_trace_lines() {
    let manifest: toml::Table =
        toml::from_str(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))).unwrap();
    let features = manifest["dependencies"]["slog"]["features"].as_array().unwrap();
    for wanted in ["max_level_trace", "release_max_level_trace"] {
        assert!(features.iter().any(|feature| feature.as_str() == Some(wanted)), "slog needs {wanted}");
    }
    assert_eq!(slog::__slog_static_max_level(), slog::FilterLevel::Trace);
}

fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(AGENT).args(args).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn bad_flags_and_config_exit_2_naming_the_key_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let (code, stderr) = run_to_exit(&["--data-dir", data_arg, "--fsync", "sometimes"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--fsync") && stderr.lines().count() == 1, "{stderr}");

    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "max-record-bytes = 1024\nsegment-max-store-bytes = \"big\"\n").unwrap();
    let (code, stderr) = run_to_exit(&["--data-dir", data_arg, "--config-file", config.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("proglog-agent: segment-max-store-bytes:") && stderr.lines().count() == 1,
        "{stderr}"
    );

    let (code, stderr) = run_to_exit(&["--data-dir", data_arg, "--server-tls-cert-file", "/nonexistent.pem"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!data.exists(), "nothing is written before the config is valid");
}

#[tokio::test]
async fn plaintext_on_a_non_loopback_address_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, stderr) = run_to_exit(&["--data-dir", data, "--bind-addr", "0.0.0.0:0", "--rpc-port", "0"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("bind-addr") && stderr.contains("--insecure"), "{stderr}");
    // With --insecure it starts (it listens on all addresses; we only stop it).
    let agent = Agent::start(dir.path(), &["--bind-addr", "0.0.0.0:0", "--http-addr", "", "--insecure"]);
    assert_eq!(agent.terminate().await.code(), Some(0));
}

/// Mutual-TLS material for one test.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        proglog_certs::write_dev_set(dir.path()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn agent_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, file) in [
            ("--server-tls-cert-file", "server.pem"),
            ("--server-tls-key-file", "server-key.pem"),
            ("--server-tls-ca-file", "ca.pem"),
            ("--acl-model-file", "model.conf"),
            ("--acl-policy-file", "policy.csv"),
        ] {
            args.push(flag.to_owned());
            args.push(self.path(file).to_str().unwrap().to_owned());
        }
        args
    }

    /// A TLS HTTP exchange presenting `client` (e.g. "root") or no certificate.
    fn https(
        &self,
        addr: SocketAddr,
        client: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(self.path("ca.pem")).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match client {
            Some(name) => {
                let certs = CertificateDer::pem_file_iter(self.path(&format!("{name}-client.pem")))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}-client-key.pem"))).unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        // A rejected handshake surfaces here, as an error or an empty response.
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        Some((status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    }
}

#[tokio::test]
async fn tls_and_acl_guard_http_exactly_as_grpc() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let args = pki.agent_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(data.path(), &args);
    let record = Some(r#"{"record":{"value":"aGk="}}"#);

    assert_eq!(
        pki.https(agent.http(), Some("root"), "POST", "/", record),
        Some((200, r#"{"offset":0}"#.into()))
    );
    let (status, body) = pki.https(agent.http(), Some("nobody"), "POST", "/records", record).unwrap();
    assert_eq!((status, body.as_str()), (403, r#"{"error":"nobody not permitted to produce to *"}"#));
    let (status, _) = pki.https(agent.http(), Some("nobody"), "GET", "/records/0", None).unwrap();
    assert_eq!(status, 403);
    assert_eq!(pki.https(agent.http(), None, "GET", "/records/0", None), None, "no client certificate");
    // Plaintext to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(agent.http()).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plaintext must not be served");
    // Metrics and health are not ACL-checked, but TLS still applies.
    assert_eq!(pki.https(agent.http(), Some("nobody"), "GET", "/healthz", None).unwrap().0, 200);
    assert_eq!(pki.https(agent.http(), Some("nobody"), "GET", "/metrics", None).unwrap().0, 200);

    // The same decisions over gRPC.
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |name: &str| std::fs::read_to_string(pki.path(name)).unwrap();
    let client = |name: &str| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(
                read(&format!("{name}-client.pem")),
                read(&format!("{name}-client-key.pem")),
            ))
            .domain_name("localhost");
        LogClient::new(
            Endpoint::from_shared(format!("https://{}", agent.rpc))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect_lazy(),
        )
    };
    let status = client("nobody").produce(produce("x")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "nobody not permitted to produce to *")
    );
    let record =
        client("root").consume(ConsumeRequest { offset: 0 }).await.unwrap().into_inner().record.unwrap();
    assert_eq!(record.value, "hi");
    assert_eq!(agent.terminate().await.code(), Some(0));
}
