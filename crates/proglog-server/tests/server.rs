//! The book's server tests, and more: every RPC against an in-process server with
//! mutual TLS and the casbin ACL.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::Duration;

use common::{Pki, TestServer, client_as, plaintext_client, tls_channel};
use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{ConsumeRequest, GetOffsetsRequest, GetServersRequest, ProduceRequest, Record};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn produce(value: &str) -> ProduceRequest {
    ProduceRequest {
        record: Some(Record { value: value.to_owned().into(), ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test]
async fn produce_then_consume_a_record() {
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    let mut root = client_as(&pki, server.addr, "root");
    let offset = root.produce(produce("hello world")).await.unwrap().into_inner().offset;
    assert_eq!(offset, 0);
    let record = root
        .consume(ConsumeRequest { offset, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(
        record,
        Record { value: "hello world".into(), offset: 0, term: 0, r#type: 0, timestamp_ms: 0 }
    );
    server.stop().await;
}

#[tokio::test]
async fn produce_stream_and_consume_stream() {
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    let mut root = client_as(&pki, server.addr, "root");
    let values = ["first message", "second message"];
    let requests = tokio_stream::iter(values.map(produce));
    let mut responses = root.produce_stream(requests).await.unwrap().into_inner();
    for expected in 0..values.len() as u64 {
        assert_eq!(responses.next().await.unwrap().unwrap().offset, expected);
    }
    assert!(responses.next().await.is_none(), "the stream ends after the client half-closes");

    let mut stream =
        root.consume_stream(ConsumeRequest { offset: 0, ..Default::default() }).await.unwrap().into_inner();
    for (offset, value) in values.iter().enumerate() {
        let record = stream.next().await.unwrap().unwrap().record.unwrap();
        assert_eq!(
            record,
            Record {
                value: value.to_string().into(),
                offset: offset as u64,
                term: 0,
                r#type: 0,
                timestamp_ms: 0
            }
        );
    }
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn get_offsets_tells_the_range_a_consumer_can_read() {
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    let mut root = client_as(&pki, server.addr, "root");
    let response = root.get_offsets(GetOffsetsRequest {}).await.unwrap().into_inner();
    assert_eq!((response.lowest, response.next), (0, 0), "empty");
    for value in ["a", "b", "c"] {
        root.produce(produce(value)).await.unwrap();
    }
    let response = root.get_offsets(GetOffsetsRequest {}).await.unwrap().into_inner();
    assert_eq!((response.lowest, response.next), (0, 3));
    server.stop().await;
}

#[tokio::test]
async fn consume_past_the_end_is_out_of_range_with_a_localized_message() {
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    let mut root = client_as(&pki, server.addr, "root");
    let offset = root.produce(produce("hello world")).await.unwrap().into_inner().offset;
    let status = root.consume(ConsumeRequest { offset: offset + 1, ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(status.message(), "offset out of range: 1");
    let localized = status.get_details_localized_message().unwrap();
    assert_eq!(localized.locale, "en-US");
    server.stop().await;
}

#[tokio::test]
async fn nobody_is_denied_every_rpc_including_both_streams() {
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    let mut nobody = client_as(&pki, server.addr, "nobody");
    let denied = |status: tonic::Status, action: &str| {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(status.message(), format!("nobody not permitted to {action} to *"));
    };
    denied(nobody.produce(produce("x")).await.unwrap_err(), "produce");
    denied(nobody.consume(ConsumeRequest { offset: 0, ..Default::default() }).await.unwrap_err(), "consume");
    denied(
        nobody.consume_stream(ConsumeRequest { offset: 0, ..Default::default() }).await.unwrap_err(),
        "consume",
    );
    denied(nobody.produce_stream(tokio_stream::iter([produce("x")])).await.unwrap_err(), "produce");
    denied(nobody.get_offsets(GetOffsetsRequest {}).await.unwrap_err(), "consume");
    // GetServers is not ACL-checked (as in the book), TLS still applies.
    let servers = nobody.get_servers(GetServersRequest {}).await.unwrap().into_inner().servers;
    assert_eq!(servers.len(), 1);
    assert!(servers[0].is_leader);
    assert_eq!(servers[0].rpc_addr, server.addr.to_string());
    server.stop().await;
}

#[tokio::test]
async fn connections_without_a_valid_client_certificate_are_rejected() {
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    // No client certificate.
    let channel = tls_channel(&pki, server.addr, None);
    assert!(LogClient::new(channel).produce(produce("x")).await.is_err());
    // A certificate from another CA.
    let other = proglog_certs::Ca::new("other CA").unwrap();
    let foreign = other.client_cert("root").unwrap();
    let channel = tls_channel(&pki, server.addr, Some(&foreign));
    assert!(LogClient::new(channel).produce(produce("x")).await.is_err());
    // An expired certificate from the right CA.
    let expired = pki.ca.expired_client_cert("root").unwrap();
    let channel = tls_channel(&pki, server.addr, Some(&expired));
    assert!(LogClient::new(channel).produce(produce("x")).await.is_err());
    // Plaintext to the TLS port.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr)).unwrap();
    assert!(LogClient::new(channel.connect_lazy()).produce(produce("x")).await.is_err());

    // The server still serves good clients.
    let mut root = client_as(&pki, server.addr, "root");
    assert_eq!(root.produce(produce("ok")).await.unwrap().into_inner().offset, 0);
    server.stop().await;
}

#[tokio::test]
async fn bad_records_are_rejected_and_the_server_stays_healthy() {
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    let mut root = client_as(&pki, server.addr, "root");

    let status = root.produce(ProduceRequest { record: None, ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let oversized = "x".repeat((1 << 20) + 1);
    let status = root.produce(produce(&oversized)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("1048577") && status.message().contains("1048576"),
        "{}",
        status.message()
    );

    // Far above the limit too: refused from the message length, before the
    // body is read, with the same code and both sizes.
    for bytes in [(1 << 20) + 2048, 3 << 20, 16 << 20] {
        let status = root.produce(produce(&"y".repeat(bytes))).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bytes} bytes: {status:?}");
        let named: usize = status.message().split(' ').nth(3).and_then(|n| n.parse().ok()).unwrap();
        assert!((bytes..bytes + 16).contains(&named), "{}", status.message());
        assert!(status.message().ends_with("max-record-bytes (1048576 bytes)"), "{}", status.message());
    }

    // In a stream: answers for the records before the bad one, then the error.
    let requests = tokio_stream::iter([produce("a"), produce("b"), produce(&oversized), produce("never")]);
    let mut responses = root.produce_stream(requests).await.unwrap().into_inner();
    assert_eq!(responses.next().await.unwrap().unwrap().offset, 0);
    assert_eq!(responses.next().await.unwrap().unwrap().offset, 1);
    assert_eq!(responses.next().await.unwrap().unwrap_err().code(), Code::InvalidArgument);
    let huge = "z".repeat(5 << 20);
    let requests = tokio_stream::iter([produce("c"), produce(&huge), produce("never")]);
    let mut responses = root.produce_stream(requests).await.unwrap().into_inner();
    assert_eq!(responses.next().await.unwrap().unwrap().offset, 2);
    assert_eq!(responses.next().await.unwrap().unwrap_err().code(), Code::InvalidArgument);

    // Same connection, and a new one, both still work; nothing bad was stored.
    assert_eq!(root.produce(produce("fine")).await.unwrap().into_inner().offset, 3);
    let mut other = client_as(&pki, server.addr, "root");
    let record = other
        .consume(ConsumeRequest { offset: 3, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(record.value, "fine");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_producers_get_unique_dense_offsets() {
    let server = TestServer::plaintext().await;
    let mut tasks = Vec::new();
    for producer in 0..8 {
        let mut client = plaintext_client(server.addr).await;
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..50 {
                let request = produce(&format!("{producer}-{i}"));
                offsets.push(client.produce(request).await.unwrap().into_inner().offset);
            }
            offsets
        }));
    }
    let mut offsets = Vec::new();
    for task in tasks {
        offsets.extend(task.await.unwrap());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (0..400).collect::<Vec<u64>>());
    server.stop().await;
}

#[tokio::test]
async fn consume_stream_follows_records_appended_after_it_started() {
    let server = TestServer::plaintext().await;
    let mut client = plaintext_client(server.addr).await;
    let mut stream =
        client.consume_stream(ConsumeRequest { offset: 0, ..Default::default() }).await.unwrap().into_inner();
    let mut producer = plaintext_client(server.addr).await;
    for i in 0..3 {
        producer.produce(produce(&format!("late {i}"))).await.unwrap();
        let record =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(record.record.unwrap().value, format!("late {i}"));
    }
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let pki = Pki::new();
    let server = TestServer::secure(&pki).await;
    let identity = pki.ca.client_cert("nobody").unwrap();
    let channel = tls_channel(&pki, server.addr, Some(&identity));
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "log.v1.Log"] {
        let response = health.check(HealthCheckRequest { service: service.into() }).await.unwrap();
        assert_eq!(response.into_inner().status(), ServingStatus::Serving, "service {service:?}");
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|service| service.name).collect();
    assert!(names.contains(&"log.v1.Log".to_string()), "{names:?}");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_keeps_every_record() {
    let server = TestServer::plaintext().await;
    let mut client = plaintext_client(server.addr).await;
    client.produce(produce("kept")).await.unwrap();
    let mut stream =
        client.consume_stream(ConsumeRequest { offset: 0, ..Default::default() }).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    let log = std::sync::Arc::clone(&server.log);
    server.stop().await;
    assert!(
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .is_none_or(|r| r.is_err())
    );
    assert_eq!(proglog_raft::CommitLog::read(&*log, 0).await.unwrap().value, "kept");
}

#[tokio::test]
async fn every_call_is_counted_by_method_and_code() {
    use std::sync::Arc;
    let recorder = Arc::new(metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder());
    let handle = recorder.handle();
    let data = tempfile::tempdir().unwrap();
    let log = proglog_log::Log::open(data.path(), proglog_log::Config::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(
        proglog_raft::LocalLog::new(log, proglog_raft::Fsync::Never, "n", addr.to_string()).unwrap(),
    );
    let observer =
        proglog_server::RpcObserver::new(slog::Logger::root(slog::Discard, slog::o!()), Some(recorder));
    let config = proglog_server::ServerConfig { observer: Some(observer), ..Default::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proglog_server::serve(
        listener,
        log.clone(),
        Arc::new(proglog_server::AllowAll),
        config,
        async {
            let _ = stopped.await;
        },
    ));
    let mut client = plaintext_client(addr).await;
    client.produce(produce("one")).await.unwrap();
    client.consume(ConsumeRequest { offset: 9, ..Default::default() }).await.unwrap_err();
    let mut stream =
        client.consume_stream(ConsumeRequest { offset: 0, ..Default::default() }).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    // The cancelled stream is counted once its body is dropped by the server.
    let rendered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let rendered = handle.render();
            if rendered.contains("method=\"ConsumeStream\"") {
                return rendered;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(rendered.contains("proglog_rpc_requests_total{method=\"Produce\",code=\"OK\"} 1"), "{rendered}");
    assert!(
        rendered.contains("proglog_rpc_requests_total{method=\"Consume\",code=\"OUT_OF_RANGE\"} 1"),
        "{rendered}"
    );
    assert!(rendered.contains("proglog_rpc_duration_seconds"), "{rendered}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    log.close().unwrap();
}
