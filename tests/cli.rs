//! Black-box tests of the `proglog` client CLI (SPEC §6): the real binary against an
//! in-process server on 127.0.0.1:0 (plaintext, or mutual TLS with the book's ACL).
//!
//! The server runs on the test's runtime, so the CLI runs as a `tokio::process` child
//! (never blocking a worker); every child is awaited under a timeout and killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use proglog_certs::Ca;
use proglog_raft::{ChannelNetwork, Fsync, LocalLog, LogError, Member, RaftConfig, RaftLog};
use proglog_server::{Acl, AllowAll, Authorizer, ServerConfig, ServerError, TlsFiles};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest a CLI run may take before the test fails (and the child is killed).
const DEADLINE: Duration = Duration::from_secs(10);

struct TestServer {
    addr: std::net::SocketAddr,
    /// Closes the log once the server stopped.
    close: Box<dyn FnOnce() -> Result<(), LogError> + Send>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    _data: tempfile::TempDir,
}

impl TestServer {
    async fn start(tls: Option<TlsFiles>, authorizer: Arc<dyn Authorizer>) -> Self {
        Self::start_with(tls, authorizer, proglog_log::Config::default()).await
    }

    async fn start_with(
        tls: Option<TlsFiles>,
        authorizer: Arc<dyn Authorizer>,
        log_config: proglog_log::Config,
    ) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let log = proglog_log::Log::open(data.path(), log_config).expect("open log");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let log =
            Arc::new(LocalLog::new(log, Fsync::Never, "test-node", addr.to_string()).expect("local log"));
        let (stop, stopped) = oneshot::channel();
        let config = ServerConfig { tls, ..ServerConfig::default() };
        let task = tokio::spawn(proglog_server::serve(listener, log.clone(), authorizer, config, async {
            let _ = stopped.await;
        }));
        let close = Box::new(move || log.close());
        Self { addr, close, stop: Some(stop), task: Some(task), _data: data }
    }

    async fn plaintext() -> Self {
        Self::start(None, Arc::new(AllowAll)).await
    }

    /// A plaintext server of a one-member replicated log (what an agent runs),
    /// which keeps consumer positions.
    async fn replicated() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let config = RaftConfig::new(Member::new("test-node", addr.to_string()), data.path());
        let network = ChannelNetwork::new();
        let transport = network.transport("test-node");
        let log = tokio::task::spawn_blocking(move || {
            let records =
                proglog_log::Log::open(config.data_dir.join("log"), proglog_log::Config::default())?;
            RaftLog::open(config, records, transport)
        })
        .await
        .expect("joined")
        .expect("opens");
        let log = Arc::new(log);
        network.attach(&log);
        log.wait_for_leader(DEADLINE).await.expect("leads");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(proglog_server::serve(
            listener,
            log.clone(),
            Arc::new(AllowAll),
            ServerConfig::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let close = Box::new(move || log.close());
        Self { addr, close, stop: Some(stop), task: Some(task), _data: data }
    }

    /// Mutual TLS + the book's ACL (`root` may produce and consume, `nobody` nothing).
    async fn secure(pki: &Pki) -> Self {
        let tls = TlsFiles {
            cert_file: pki.file("server.pem"),
            key_file: pki.file("server-key.pem"),
            ca_files: vec![pki.file("ca.pem")],
        };
        let acl =
            Acl::from_files(&pki.file("model.conf"), &pki.file("policy.csv")).await.expect("ACL from files");
        Self::start(Some(tls), Arc::new(acl)).await
    }

    /// `--addr` for this server.
    fn addr(&self) -> String {
        self.addr.to_string()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server");
        }
        (self.close)().expect("close log");
    }
}

/// A CA with a server certificate for localhost/127.0.0.1, client certificates for
/// `root` and `nobody`, and the ACL files, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("proglog cli test CA").expect("CA");
        let server = ca.server_cert(&["localhost", "127.0.0.1"]).expect("server cert");
        let mut files = vec![
            ("ca.pem".to_owned(), ca.cert_pem()),
            ("server.pem".to_owned(), server.cert_pem),
            ("server-key.pem".to_owned(), server.key_pem),
            ("model.conf".to_owned(), proglog_certs::ACL_MODEL.to_owned()),
            ("policy.csv".to_owned(), proglog_certs::ACL_POLICY.to_owned()),
        ];
        for name in ["root", "nobody"] {
            let client = ca.client_cert(name).expect("client cert");
            files.push((format!("{name}.pem"), client.cert_pem));
            files.push((format!("{name}-key.pem"), client.key_pem));
        }
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write PEM");
        }
        Self { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The TLS flags of a client whose certificate has Common Name `name`.
    fn flags_as(&self, name: &str) -> Vec<String> {
        vec![
            "--ca-file".into(),
            path_arg(&self.file("ca.pem")),
            "--cert-file".into(),
            path_arg(&self.file(&format!("{name}.pem"))),
            "--key-file".into(),
            path_arg(&self.file(&format!("{name}-key.pem"))),
        ]
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("temp paths are UTF-8").to_owned()
}

fn command(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_proglog"));
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    command
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// Runs the CLI to completion with `stdin` (or an empty stdin).
async fn run_with_stdin(args: &[String], stdin: &[u8]) -> Output {
    let mut child = command(args).stdin(Stdio::piped()).spawn().expect("spawn proglog");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    match tokio::time::timeout(DEADLINE, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for proglog"),
        Err(_) => panic!("proglog {args:?} did not finish within {DEADLINE:?}"),
    }
}

async fn run(args: &[String]) -> Output {
    run_with_stdin(args, b"").await
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a zero exit and an empty stderr; returns stdout.
#[track_caller]
fn success(output: &Output) -> String {
    assert!(output.status.success(), "exit {:?}, stderr: {}", output.status, stderr(output));
    assert_eq!(stderr(output), "");
    stdout(output)
}

/// Asserts exit `code` and a one-line `proglog: ...` message; returns the message.
#[track_caller]
fn failure(output: &Output, code: i32) -> String {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {message}, stdout: {}", stdout(output));
    assert!(message.starts_with("proglog: "), "{message:?}");
    assert_eq!(message.lines().count(), 1, "{message:?}");
    assert!(!message.contains("panicked"), "{message:?}");
    message
}

/// `args` against `server`, with `--addr` in front of the subcommand.
fn at(server: &TestServer, args: &[&str]) -> Vec<String> {
    let mut all = strings(&["--addr", &server.addr()]);
    all.extend(strings(args));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_prints_the_offset_of_each_value() {
    let server = TestServer::plaintext().await;
    assert_eq!(success(&run(&at(&server, &["produce", "hello"])).await), "0\n"); // unary
    assert_eq!(success(&run(&at(&server, &["produce", "a", "b", "c"])).await), "1\n2\n3\n"); // stream
    // Flags after the subcommand, the proglog:// forms, `--` before a dash value.
    let addr = format!("proglog://{}", server.addr());
    assert_eq!(success(&run(&strings(&["produce", "--addr", &addr, "--", "-d"])).await), "4\n");
    let addr = format!("proglog:///{}", server.addr());
    assert_eq!(success(&run(&strings(&["produce", "e", "--addr", &addr])).await), "5\n");
    let values = success(&run(&at(&server, &["consume"])).await);
    assert_eq!(values, "hello\na\nb\nc\n-d\ne\n");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_reads_one_record_per_stdin_line() {
    let server = TestServer::plaintext().await;
    // The line ending is dropped (`\n` or `\r\n`); an empty line is an empty record;
    // a last line without a newline counts.
    let output = run_with_stdin(&at(&server, &["produce"]), b"one\ntwo\r\n\nfour").await;
    assert_eq!(success(&output), "0\n1\n2\n3\n");
    let output = run_with_stdin(&at(&server, &["produce"]), b"five\n").await; // a single line: unary
    assert_eq!(success(&output), "4\n");
    assert_eq!(success(&run_with_stdin(&at(&server, &["produce"]), b"").await), "");
    assert_eq!(success(&run(&at(&server, &["consume"])).await), "one\ntwo\n\nfour\nfive\n");

    let many: String = (0..2000).map(|i| format!("record {i}\n")).collect();
    let output = success(&run_with_stdin(&at(&server, &["produce"]), many.as_bytes()).await);
    let expected: String = (5..2005).map(|offset| format!("{offset}\n")).collect();
    assert_eq!(output, expected);
    let output = success(&run(&at(&server, &["consume", "--offset", "5"])).await);
    assert_eq!(output, many);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_reads_from_the_offset_to_the_end_or_count() {
    let server = TestServer::plaintext().await;
    success(&run(&at(&server, &["produce", "a", "b", "c", "d", "e"])).await);
    assert_eq!(success(&run(&at(&server, &["consume"])).await), "a\nb\nc\nd\ne\n");
    assert_eq!(success(&run(&at(&server, &["consume", "--offset", "1", "--count", "2"])).await), "b\nc\n");
    assert_eq!(success(&run(&at(&server, &["consume", "--offset", "3"])).await), "d\ne\n");
    assert_eq!(success(&run(&at(&server, &["consume", "--offset", "3", "--count", "9"])).await), "d\ne\n");
    assert_eq!(success(&run(&at(&server, &["consume", "--count", "0"])).await), "");
    // At the end: nothing to print. Beyond it: OUT_OF_RANGE, exit 1.
    assert_eq!(success(&run(&at(&server, &["consume", "--offset", "5"])).await), "");
    let message = failure(&run(&at(&server, &["consume", "--offset", "7"])).await, 1);
    assert!(message.contains("offset out of range: 7"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_as_a_group_resumes_after_what_it_printed() {
    let server = TestServer::replicated().await;
    success(&run(&at(&server, &["produce", "a", "b", "c"])).await);
    let group = ["consume", "--group", "billing"];
    // Never committed: from the lowest offset; what was printed is committed.
    assert_eq!(success(&run(&at(&server, &[&group[..], &["--count", "2"]].concat())).await), "a\nb\n");
    assert_eq!(success(&run(&at(&server, &group)).await), "c\n");
    assert_eq!(success(&run(&at(&server, &group)).await), "");
    success(&run(&at(&server, &["produce", "d"])).await);
    assert_eq!(success(&run(&at(&server, &group)).await), "d\n");
    // Another group has its own position.
    assert_eq!(success(&run(&at(&server, &["consume", "--group", "audit"])).await), "a\nb\nc\nd\n");
    let message = failure(&run(&at(&server, &["consume", "--group", "no spaces"])).await, 1);
    assert!(message.contains("consumer group"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_of_an_empty_log_prints_nothing() {
    let server = TestServer::plaintext().await;
    assert_eq!(success(&run(&at(&server, &["consume"])).await), "");
    let message = failure(&run(&at(&server, &["consume", "--offset", "1"])).await, 1);
    assert!(message.contains("offset out of range: 1"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_below_the_lowest_offset_is_out_of_range() {
    // A log that starts at offset 10, as one whose older segments were removed.
    let config = proglog_log::Config { initial_offset: 10, ..proglog_log::Config::default() };
    let server = TestServer::start_with(None, Arc::new(AllowAll), config).await;
    // Without --offset, consume starts at the lowest offset still held.
    assert_eq!(success(&run(&at(&server, &["consume"])).await), "");
    let message = failure(&run(&at(&server, &["consume", "--offset", "0"])).await, 1);
    assert!(message.contains("offset out of range: 0"), "{message}");
    assert_eq!(success(&run(&at(&server, &["consume", "--offset", "10"])).await), ""); // the end
    assert_eq!(success(&run(&at(&server, &["produce", "ten", "eleven"])).await), "10\n11\n");
    assert_eq!(success(&run(&at(&server, &["consume"])).await), "ten\neleven\n");
    let message = failure(&run(&at(&server, &["consume", "--offset", "9"])).await, 1);
    assert!(message.contains("offset out of range: 9"), "{message}");
    assert_eq!(success(&run(&at(&server, &["consume", "--offset", "10"])).await), "ten\neleven\n");
    assert_eq!(success(&run(&at(&server, &["consume", "--offset", "12"])).await), "");
    failure(&run(&at(&server, &["consume", "--offset", "13"])).await, 1);
    let message = failure(&run(&at(&server, &["consume", "--follow", "--offset", "3"])).await, 1);
    assert!(message.contains("offset out of range: 3"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_round_trips_values_in_base64() {
    let server = TestServer::plaintext().await;
    let binary: &[u8] = &[0xff, 0x00, b'x', 0xfe, b'\r'];
    let output = run_with_stdin(&at(&server, &["--output", "json", "produce"]), binary).await;
    assert_eq!(success(&output), "{\"offset\":0}\n");
    let output = run(&at(&server, &["produce", "plain text", "é", "--output", "json"])).await;
    assert_eq!(success(&output), "{\"offset\":1}\n{\"offset\":2}\n");

    let output = success(&run(&at(&server, &["consume", "--output", "json"])).await);
    let lines: Vec<serde_json::Value> =
        output.lines().map(|line| serde_json::from_str(line).expect("a JSON object per line")).collect();
    let expected: [&[u8]; 3] = [binary, b"plain text", "é".as_bytes()];
    assert_eq!(lines.len(), expected.len(), "{output}");
    for (offset, (line, value)) in lines.iter().zip(expected).enumerate() {
        assert_eq!(line["offset"], serde_json::json!(offset), "{line}");
        let decoded = BASE64.decode(line["value"].as_str().expect("value is a string")).expect("base64");
        assert_eq!(decoded, value, "{line}");
    }
    // Text output shows values lossily.
    let output = success(&run(&at(&server, &["consume", "--count", "1"])).await);
    assert_eq!(output, "\u{fffd}\u{0}x\u{fffd}\r\n");
    server.stop().await;
}

/// Reads one line of the child's stdout within the deadline.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    match tokio::time::timeout(DEADLINE, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        other => panic!("expected a line from proglog consume --follow, got {other:?}"),
    }
}

async fn wait(mut child: Child) -> std::process::ExitStatus {
    match tokio::time::timeout(DEADLINE, child.wait()).await {
        Ok(status) => status.expect("wait for proglog"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("proglog did not exit within {DEADLINE:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_follow_receives_records_produced_after_it_started() {
    let server = TestServer::plaintext().await;
    success(&run(&at(&server, &["produce", "before"])).await);
    let mut child = command(&at(&server, &["consume", "--follow", "--count", "2"]))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn proglog");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The first line proves the stream is open before the second record exists.
    assert_eq!(next_line(&mut lines).await, "before");
    success(&run(&at(&server, &["produce", "after"])).await);
    assert_eq!(next_line(&mut lines).await, "after");
    let status = wait(child).await;
    assert!(status.success(), "{status:?}");

    // From an offset not yet written: waits for it (json output too).
    let mut child =
        command(&at(&server, &["consume", "-f", "--offset", "3", "--count", "1", "--output", "json"]))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn proglog");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    success(&run(&at(&server, &["produce", "skipped"])).await);
    success(&run(&at(&server, &["produce", "third"])).await);
    let line = next_line(&mut lines).await;
    assert_eq!(line, format!("{{\"offset\":3,\"value\":\"{}\"}}", BASE64.encode("third")));
    let status = wait(child).await;
    assert!(status.success(), "{status:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_lists_the_one_leader() {
    let server = TestServer::plaintext().await;
    let output = success(&run(&at(&server, &["servers"])).await);
    assert_eq!(output, format!("test-node {} leader\n", server.addr));
    let output = success(&run(&at(&server, &["servers", "--output", "json"])).await);
    let line: serde_json::Value = serde_json::from_str(output.trim_end()).expect("JSON");
    assert_eq!(
        line,
        serde_json::json!({"id": "test-node", "rpc_addr": server.addr.to_string(), "is_leader": true})
    );
    assert_eq!(output.lines().count(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_root_certificate_produces_and_consumes() {
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    let tls = pki.flags_as("root");
    let with_tls = |args: &[&str]| {
        let mut all = at(&server, args);
        all.extend(tls.iter().cloned());
        all
    };
    // The server name defaults to the host of --addr (an IP SAN here).
    assert_eq!(success(&run(&with_tls(&["produce", "secret"])).await), "0\n");
    assert_eq!(success(&run(&with_tls(&["produce", "s1", "s2"])).await), "1\n2\n");
    assert_eq!(success(&run(&with_tls(&["consume"])).await), "secret\ns1\ns2\n");
    let output = run(&with_tls(&["consume", "--offset", "2", "--server-name", "localhost"])).await;
    assert_eq!(success(&output), "s2\n");
    let output = success(&run(&with_tls(&["servers"])).await);
    assert!(output.ends_with(" leader\n"), "{output}");

    // A name the certificate does not carry fails the handshake.
    let message = failure(&run(&with_tls(&["servers", "--server-name", "elsewhere.example"])).await, 1);
    assert!(message.contains("cannot connect"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_as_nobody_is_permission_denied() {
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    for (args, action) in [
        (&["produce", "x"][..], "produce"),
        (&["produce", "x", "y"][..], "produce"),
        (&["consume"][..], "consume"),
        (&["consume", "--follow"][..], "consume"),
    ] {
        let mut all = at(&server, args);
        all.extend(pki.flags_as("nobody"));
        let message = failure(&run(&all).await, 1);
        assert_eq!(message, format!("proglog: nobody not permitted to {action} to *\n"), "{args:?}");
    }
    // Nothing was written.
    let mut all = at(&server, &["consume"]);
    all.extend(pki.flags_as("root"));
    assert_eq!(success(&run(&all).await), "");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_tls_files_are_named() {
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    let missing = path_arg(&pki.file("missing.pem"));
    let mut args = at(&server, &["servers"]);
    args.extend(strings(&["--ca-file", &path_arg(&pki.file("ca.pem")), "--cert-file", &missing]));
    args.extend(strings(&["--key-file", &path_arg(&pki.file("root-key.pem"))]));
    let message = failure(&run(&args).await, 1);
    assert!(message.contains("--cert-file") && message.contains(&missing), "{message}");

    let mut args = at(&server, &["servers", "--ca-file", &path_arg(&pki.file("policy.csv"))]);
    args.extend(strings(&["--cert-file", &path_arg(&pki.file("root.pem"))]));
    args.extend(strings(&["--key-file", &path_arg(&pki.file("root-key.pem"))]));
    let message = failure(&run(&args).await, 1);
    assert!(message.contains("no PEM") && message.contains("policy.csv"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    for args in [
        &["--bogus", "servers"][..],
        &["servers", "--bogus"],
        &["frobnicate"],
        &[],
        &["consume", "--offset", "-1"],
        &["consume", "--offset", "many"],
        &["consume", "--count", "x"],
        &["servers", "--output", "yaml"],
        &["servers", "--addr", "no-port"],
        &["servers", "--addr", "http://127.0.0.1:8400"],
        &["servers", "--addr", "127.0.0.1:99999"],
        &["servers", "--ca-file", "ca.pem", "--cert-file", "c.pem"],
        &["servers", "--key-file", "k.pem", "--ca-file", "ca.pem"],
        &["servers", "--cert-file", "c.pem", "--key-file", "k.pem"],
    ] {
        let output = run(&strings(args)).await;
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert!(message.starts_with("proglog: ") || args.is_empty(), "{args:?}: {message}");
        assert!(!message.contains("panicked"), "{args:?}: {message}");
        assert_eq!(stdout(&output), "", "{args:?}");
    }
    let help = run(&strings(&["--help"])).await;
    assert!(success(&help).contains("proglog://"), "--help documents the address forms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_exits_1() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    drop(listener);
    let message = failure(&run(&strings(&["servers", "--addr", &addr])).await, 1);
    assert!(message.contains(&format!("cannot connect to {addr}")), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_exit_1_with_a_hint() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = TestServer::secure(&pki).await;
    let ca = path_arg(&pki.file("ca.pem"));
    // Plaintext against a TLS server.
    let message = failure(&run(&at(&server, &["produce", "x"])).await, 1);
    assert!(message.contains("give --ca-file"), "{message}");
    // No client certificate against a server that requires one.
    let message = failure(&run(&at(&server, &["consume", "--ca-file", &ca])).await, 1);
    assert!(message.contains("give --cert-file and --key-file"), "{message}");
    // The server's certificate is not signed by --ca-file.
    let mut args = at(&server, &["servers"]);
    args.extend(other.flags_as("root"));
    let message = failure(&run(&args).await, 1);
    assert!(message.contains("invalid peer certificate"), "{message}");
    // A client certificate the server does not trust.
    let mut args = at(&server, &["produce", "x", "--ca-file", &ca]);
    args.extend(strings(&["--cert-file", &path_arg(&other.file("root.pem"))]));
    args.extend(strings(&["--key-file", &path_arg(&other.file("root-key.pem"))]));
    let message = failure(&run(&args).await, 1);
    assert!(message.contains("client certificate"), "{message}");
    server.stop().await;
}
