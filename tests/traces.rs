//! Traces from real agents (SPEC §9), received by an OTLP/gRPC collector this
//! test runs on loopback: a produce through a follower is one trace from the
//! caller's span through the follower to the leader's commit and fsync; an
//! unsampled caller is not traced; a denied call's status is on its span; a
//! collector that is down costs spans, never service.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use support::cluster::{DEADLINE, start, wait_for_metric, wait_for_servers};
use support::otlp::{Collector, Received};
use support::{Agent, Pki, produce};

/// A W3C `traceparent` for trace `trace` and parent span `span`.
fn traceparent(trace: u128, span: u64, sampled: bool) -> String {
    format!("00-{trace:032x}-{span:016x}-{}", if sampled { "01" } else { "00" })
}

async fn produce_traced(
    pki: &Pki,
    agent: &Agent,
    client: &str,
    value: &str,
    parent: &str,
) -> Result<u64, tonic::Status> {
    let mut request = tonic::Request::new(produce(value));
    request.metadata_mut().insert("traceparent", parent.parse().unwrap());
    pki.grpc(agent.rpc, client).produce(request).await.map(|response| response.into_inner().offset)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The one span named `name` sent by `node`.
fn find<'a>(spans: &'a [Received], node: &str, name: &str) -> &'a Received {
    let found: Vec<_> = spans.iter().filter(|r| r.node == node && r.span.name == name).collect();
    assert_eq!(found.len(), 1, "{node} {name} in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_through_a_follower_is_one_trace_to_the_leaders_commit_and_fsync() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (collector, addr) = Collector::start(true).await;
    let endpoint = format!("http://{addr}");
    // Ratio 0: only callers' sampled traces are recorded.
    let flags = ["--otlp-endpoint", endpoint.as_str(), "--trace-sample-ratio", "0", "--log-level", "debug"];
    let first = start(&pki, data.path(), "node-0", None, &flags);
    let mut agents = vec![first];
    for name in ["node-1", "node-2"] {
        let agent = start(&pki, data.path(), name, Some(&agents[0]), &flags);
        agents.push(agent);
    }
    let leader = wait_for_servers(&pki, &agents[0], &["node-0", "node-1", "node-2"]).await;
    // raft-rs's lines name the node once (the agent's logger does, for every line).
    let line = agents[0].wait_for_line(&["switched to configuration"]);
    assert_eq!(line.matches(r#""node":"#).count(), 1, "{line}");
    let (follower, follower_name) =
        agents.iter().zip(["node-0", "node-1", "node-2"]).find(|(_, name)| *name != leader).unwrap();

    // Not sampled by the caller, and the ratio starts none: nothing recorded.
    let unsampled: u128 = 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c;
    produce_traced(&pki, follower, "root", "quiet", &traceparent(unsampled, 0xb7ad_6b71_6920_3331, false))
        .await
        .unwrap();

    let trace: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    let caller_span: u64 = 0x00f0_67aa_0ba9_02b7;
    let offset = produce_traced(&pki, follower, "root", "traced", &traceparent(trace, caller_span, true))
        .await
        .unwrap();
    let trace_id = trace.to_be_bytes();
    let names = ["log.v1.Log/Produce", "proglog.internal.v1.Raft/Forward", "raft.commit", "raft.fsync"];
    let spans = collector.wait_for(&trace_id, &names).await;

    // Caller -> the follower's server span -> its forwarding client span ->
    // the leader's server span -> the leader's commit -> the fsync it waited for.
    let produce = find(&spans, follower_name, "log.v1.Log/Produce");
    assert_eq!(produce.span.parent_span_id, caller_span.to_be_bytes());
    assert_eq!(produce.attribute("rpc.system"), Some(Value::StringValue("grpc".into())));
    assert_eq!(produce.attribute("rpc.method"), Some(Value::StringValue("Produce".into())));
    assert_eq!(produce.attribute("rpc.grpc.status_code"), Some(Value::IntValue(0)));
    let hops: Vec<_> = spans.iter().filter(|r| r.span.name == "proglog.internal.v1.Raft/Forward").collect();
    let client_hop = hops.iter().find(|r| r.node == follower_name).expect("the follower's hop");
    assert_eq!(client_hop.span.parent_span_id, produce.span.span_id);
    let server_hop = hops.iter().find(|r| r.node == leader).expect("the leader's hop");
    assert_eq!(server_hop.span.parent_span_id, client_hop.span.span_id);
    let commit = find(&spans, &leader, "raft.commit");
    assert_eq!(commit.span.parent_span_id, server_hop.span.span_id);
    assert_eq!(commit.attribute("proglog.first_offset"), Some(Value::IntValue(offset as i64)));
    let fsync = find(&spans, &leader, "raft.fsync");
    assert_eq!(fsync.span.parent_span_id, commit.span.span_id);
    assert!(collector.of_trace(&unsampled.to_be_bytes()).is_empty(), "an unsampled caller was traced");

    // HTTP too: a produce through the follower's HTTP API joins the caller's trace.
    let over_http: u128 = 0x9999_aaaa_bbbb_cccc_dddd_eeee_ffff_0001;
    let parent = traceparent(over_http, 2, true);
    let body = r#"{"record":{"value":"aHR0cA=="}}"#;
    let answer = pki.https_with(
        follower.http(),
        Some("root"),
        "POST",
        "/records",
        &[("traceparent", &parent)],
        Some(body),
    );
    assert_eq!(answer.map(|(status, _)| status), Some(200));
    let spans = collector.wait_for(&over_http.to_be_bytes(), &["POST /records", "raft.commit"]).await;
    let http_span = find(&spans, follower_name, "POST /records");
    assert_eq!(http_span.span.parent_span_id, 2u64.to_be_bytes());
    assert_eq!(http_span.attribute("http.response.status_code"), Some(Value::IntValue(200)));

    // A denied call's status is on its span.
    let denied: u128 = 0x1111_2222_3333_4444_5555_6666_7777_8888;
    let status =
        produce_traced(&pki, follower, "nobody", "no", &traceparent(denied, 1, true)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let spans = collector.wait_for(&denied.to_be_bytes(), &["log.v1.Log/Produce"]).await;
    let refused = find(&spans, follower_name, "log.v1.Log/Produce");
    assert_eq!(refused.attribute("rpc.grpc.status_code"), Some(Value::IntValue(7)));
    assert_eq!(refused.span.status.as_ref().map(|status| status.code), Some(2), "status ERROR");
    // The call's log line names its trace and span.
    let line = follower.wait_for_line(&[r#""msg":"rpc""#, &format!("{denied:032x}")]);
    assert!(line.contains(&hex(&refused.span.span_id)), "{line}");

    for agent in agents {
        assert!(agent.terminate().await.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_a_trace_the_agent_joins() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (collector, addr) = Collector::start(true).await;
    let endpoint = format!("http://{addr}");
    let agent = pki.start_agent(
        &data.path().join("solo"),
        &["--otlp-endpoint", endpoint.as_str(), "--trace-sample-ratio", "0"],
    );
    let path = |name: &str| pki.path(name).to_str().unwrap().to_owned();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_proglog"))
        .args(["--addr", &agent.rpc.to_string(), "--server-name", "localhost", "--ca-file", &path("ca.pem")])
        .args(["--cert-file", &path("root-client.pem"), "--key-file", &path("root-client-key.pem")])
        .args(["produce", "traced from the cli"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, output).await.unwrap().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // The CLI's root span, and the agent's server span as its child, in one trace.
    let deadline = Instant::now() + DEADLINE;
    let (root, served) = loop {
        let spans = collector.received();
        let root = spans.iter().find(|r| r.span.name == "proglog produce").cloned();
        if let Some(root) = root
            && let Some(served) = spans
                .iter()
                .find(|r| r.span.name == "log.v1.Log/Produce" && r.span.trace_id == root.span.trace_id)
        {
            break (root, served.clone());
        }
        assert!(Instant::now() < deadline, "spans: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(served.span.parent_span_id, root.span.span_id);
    assert_eq!(served.node, "black-box", "the agent (its node name) served it");
    assert!(agent.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_spans_never_service() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let endpoint = format!("http://{closed}");
    let agent = pki.start_agent(
        &data.path().join("solo"),
        &["--otlp-endpoint", endpoint.as_str(), "--trace-sample-ratio", "1"],
    );
    let mut client = pki.grpc(agent.rpc, "root");
    let mut offsets = HashMap::new();
    for i in 0..200 {
        let offset = client.produce(produce(&format!("record {i}"))).await.unwrap().into_inner().offset;
        offsets.insert(offset, i);
    }
    assert_eq!(offsets.len(), 200);
    wait_for_metric(&pki, &agent, "proglog_trace_spans_dropped_total", 1.0).await;
    agent.wait_for_line(&["trace spans dropped"]);
    let started = Instant::now();
    assert!(agent.terminate().await.success());
    assert!(started.elapsed() < Duration::from_secs(15), "shutdown waited {:?}", started.elapsed());
}
