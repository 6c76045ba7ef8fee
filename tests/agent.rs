//! Black-box tests of the real `proglog-agent` binary, as a user runs it: temp
//! data dirs, ports chosen by the OS (read back from the agent's JSON log), HTTP
//! and gRPC clients, signals, kill -9, restarts.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use proglog_api::v1::{ConsumeRequest, GetOffsetsRequest, GetServersRequest};
use support::{AGENT, Agent, Pki, http, produce};
use tonic::Code;

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
    let record = client
        .consume(ConsumeRequest { offset: 0, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(record.value, "Let's Go #1\n");
    assert!(record.term >= 1, "the record carries the Raft term that committed it: {record:?}");
    let (_, metrics) = http(agent.http(), "GET", "/metrics", None);
    assert!(metrics.contains(r#"proglog_rpc_requests_total{method="Consume",code="OK"} 1"#), "{metrics}");
    assert!(metrics.contains("proglog_log_highest_offset 1"), "{metrics}");
    // A single node leads, alone, and has applied all it committed (Raft entries:
    // its configuration, an empty entry per term and the two records).
    for gauge in ["proglog_raft_is_leader 1", "proglog_cluster_members 1"] {
        assert!(metrics.contains(gauge), "{gauge}: {metrics}");
    }
    let gauge = |name: &str| {
        let line = metrics.lines().find(|line| line.starts_with(&format!("{name} "))).expect(name);
        line[name.len() + 1..].parse::<f64>().expect("a number")
    };
    assert!(gauge("proglog_raft_applied_index") >= 3.0, "{metrics}");
    assert_eq!(gauge("proglog_raft_applied_index"), gauge("proglog_raft_commit_index"), "{metrics}");
    assert!(gauge("proglog_raft_term") >= 1.0, "{metrics}");
    client.consume(ConsumeRequest { offset: 9, ..Default::default() }).await.unwrap_err();
    let (_, metrics) = http(agent.http(), "GET", "/metrics", None);
    assert!(
        metrics.contains(r#"proglog_rpc_requests_total{method="Consume",code="OUT_OF_RANGE"} 1"#),
        "{metrics}"
    );
    drop(client); // a connected client would hold the graceful shutdown for its grace period
    assert!(agent.terminate().await.success());
}

#[tokio::test]
async fn retention_flags_cut_the_log_and_reads_below_the_cut_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--segment-max-store-bytes", "4096", "--retention-bytes", "8192", "--retention-ms", "0"];
    let agent = Agent::start(dir.path(), &flags);
    let mut client = agent.grpc().await;
    let value = "v".repeat(300);
    for _ in 0..100 {
        client.produce(produce(&value)).await.unwrap();
    }
    // The leader cuts within a tick or two; GetOffsets and /metrics say so.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let lowest = loop {
        let offsets = client.get_offsets(GetOffsetsRequest {}).await.unwrap().into_inner();
        if offsets.lowest > 0 {
            assert_eq!(offsets.next, 100);
            break offsets.lowest;
        }
        assert!(std::time::Instant::now() < deadline, "no retention cut: {offsets:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // At least 8 KiB stays: the newest 27 or so records of 300 B.
    assert!(lowest <= 100 - 8192 / 330, "cut too far: {lowest}");
    let below =
        client.consume(ConsumeRequest { offset: lowest - 1, ..Default::default() }).await.unwrap_err();
    assert_eq!(below.code(), Code::OutOfRange, "{below:?}");
    let kept = client.consume(ConsumeRequest { offset: lowest, ..Default::default() }).await.unwrap();
    assert_eq!(kept.into_inner().record.unwrap().value, value.as_str());
    let (_, metrics) = http(agent.http(), "GET", "/metrics", None);
    assert!(metrics.contains(&format!("proglog_log_lowest_offset {lowest}")), "{metrics}");
    // The cut survives a restart.
    drop(client);
    assert_eq!(agent.terminate().await.code(), Some(0));
    let agent = Agent::start(dir.path(), &flags);
    let mut client = agent.grpc().await;
    let offsets = client.get_offsets(GetOffsetsRequest {}).await.unwrap().into_inner();
    assert!(offsets.lowest >= lowest, "{offsets:?}");
    drop(client);
    assert_eq!(agent.terminate().await.code(), Some(0));
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
        let record = client
            .consume(ConsumeRequest { offset: i, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .record
            .unwrap();
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
        let record = client
            .consume(ConsumeRequest { offset: *offset, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .record
            .unwrap();
        assert_eq!(&record.value, value.as_str(), "acknowledged offset {offset}");
    }
    let next = client.produce(produce("next")).await.unwrap().into_inner().offset;
    assert!(next > highest, "next offset {next} must follow the acknowledged {highest}");
    // Dense: every offset below the next one is readable.
    for offset in 0..next {
        client.consume(ConsumeRequest { offset, ..Default::default() }).await.unwrap();
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
async fn the_cli_manages_and_uses_named_logs_on_the_real_agent() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &["--retention-ms", "86400000"]);
    let addr = agent.rpc.to_string();
    async fn on(addr: &str, args: &[&str]) -> (Option<i32>, String) {
        let mut all = vec!["--addr", addr];
        all.extend_from_slice(args);
        cli(&all, "").await
    }
    let run = |args: &'static [&'static str]| on(&addr, args);
    assert_eq!(
        run(&["logs", "create", "orders", "--retention-bytes", "4096"]).await,
        (Some(0), String::new())
    );
    assert_eq!(run(&["logs", "create", "orders"]).await.0, Some(1), "exists: a runtime error");
    assert_eq!(run(&["logs", "create", "Bad"]).await.0, Some(2), "a bad name: a usage error");
    assert_eq!(run(&["--log", "orders", "produce", "o-1", "o-2"]).await, (Some(0), "0\n1\n".into()));
    assert_eq!(run(&["--log", "clicks", "produce", "c-1"]).await, (Some(0), "0\n".into()), "auto-created");
    assert_eq!(run(&["produce", "d-1"]).await, (Some(0), "0\n".into()), "the default log is apart");
    let read = run(&["--log", "orders", "consume", "--linearizable"]).await;
    assert_eq!(read, (Some(0), "o-1\no-2\n".into()));
    let (code, list) = run(&["logs", "list"]).await;
    assert_eq!(code, Some(0));
    let rows: Vec<Vec<&str>> = list.lines().map(|line| line.split_whitespace().collect()).collect();
    let row = |name: &str| rows.iter().find(|row| row[0] == name).cloned().unwrap_or_default();
    assert_eq!(
        rows.iter().map(|row| row[0]).collect::<Vec<_>>(),
        ["(default)", "clicks", "orders"],
        "{list}"
    );
    // name lowest next bytes retention_bytes retention_ms: orders its own bytes
    // and the agent's default age; clicks (auto-created) the defaults.
    assert_eq!(
        (row("orders")[1], row("orders")[2], row("orders")[4], row("orders")[5]),
        ("0", "2", "4096", "86400000")
    );
    assert_eq!((row("clicks")[4], row("clicks")[5]), ("0", "86400000"));
    assert_eq!(run(&["logs", "delete", "clicks"]).await, (Some(0), String::new()));
    assert_eq!(run(&["logs", "delete", "clicks"]).await.0, Some(1), "gone: a runtime error");
    assert_eq!(run(&["--log", "orders", "servers"]).await.0, Some(0));
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn each_request_gets_one_structured_debug_line() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &["--log-level", "debug"]);
    let mut client = agent.grpc().await;
    client.produce(produce("logged")).await.unwrap();
    client.consume(ConsumeRequest { offset: 5, ..Default::default() }).await.unwrap_err();
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
    let flags =
        ["--bind-addr", "0.0.0.0:0", "--http-addr", "", "--insecure", "--advertise-addr", "127.0.0.1"];
    let agent = Agent::start(dir.path(), &flags);
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn tls_and_acl_guard_http_exactly_as_grpc() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let agent = pki.start_agent(data.path(), &[]);
    let record = Some(r#"{"record":{"value":"aGk="}}"#);

    assert_eq!(
        pki.https(agent.http(), Some("root"), "POST", "/", record),
        Some((200, r#"{"offset":0}"#.into()))
    );
    let (status, body) = pki.https(agent.http(), Some("nobody"), "POST", "/records", record).unwrap();
    assert_eq!((status, body.as_str()), (403, r#"{"error":"nobody not permitted to produce to *"}"#));
    let (status, _) = pki.https(agent.http(), Some("nobody"), "GET", "/records/0", None).unwrap();
    assert_eq!(status, 403);
    // Without a client certificate (a kubelet's probe): the probes answer, nothing else does.
    assert_eq!(pki.https(agent.http(), None, "GET", "/healthz", None).unwrap().0, 200);
    assert_eq!(pki.https(agent.http(), None, "GET", "/readyz", None).unwrap().0, 200);
    for (method, path) in
        [("GET", "/records/0"), ("POST", "/records"), ("GET", "/metrics"), ("GET", "/nowhere")]
    {
        let (status, body) = pki.https(agent.http(), None, method, path, record).unwrap();
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(body.starts_with(r#"{"error":"a client certificate is required"#), "{body}");
    }
    // The RPC port still requires one: the handshake fails.
    let mut anonymous = pki.grpc_without_certificate(agent.rpc);
    assert!(
        anonymous.get_servers(GetServersRequest {}).await.is_err(),
        "the RPC port served a client without a certificate"
    );
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
    let client = |name: &str| pki.grpc(agent.rpc, name);
    let status = client("nobody").produce(produce("x")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "nobody not permitted to produce to *")
    );
    let record = client("root")
        .consume(ConsumeRequest { offset: 0, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(record.value, "hi");
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn clients_of_the_peer_ca_are_admitted_beside_those_of_the_server_ca() {
    let (pki, peers, strangers) = (Pki::new(), Pki::new(), Pki::new());
    let data = tempfile::tempdir().unwrap();
    let peer_ca = peers.path("ca.pem");
    let agent = pki.start_agent(data.path(), &["--peer-tls-ca-file", peer_ca.to_str().unwrap()]);
    let offset = pki.grpc(agent.rpc, "root").produce(produce("client")).await.unwrap().into_inner().offset;
    assert_eq!(offset, 0);
    let mut peer = pki.grpc_issued_by(agent.rpc, &peers, "root");
    assert_eq!(peer.produce(produce("peer")).await.unwrap().into_inner().offset, 1);
    // The ACL still applies to a peer's certificate.
    let status = pki.grpc_issued_by(agent.rpc, &peers, "nobody").produce(produce("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // A certificate of neither CA is refused in the handshake, before any call.
    let status = pki.grpc_issued_by(agent.rpc, &strangers, "root").produce(produce("x")).await.unwrap_err();
    assert!(std::error::Error::source(&status).is_some(), "a transport failure: {status:?}");
    assert_eq!(agent.terminate().await.code(), Some(0));
}
