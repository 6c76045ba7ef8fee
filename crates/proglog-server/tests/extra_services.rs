//! Services the caller mounts beside `log.v1.Log` (the agent's internal Raft
//! service will be one): admitted with their own ACL action and message limit,
//! on the same port, over mutual TLS. The extra service here is gRPC health
//! renamed to `proglog.test.v1.Health`, so that no new proto is needed.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::sync::Arc;
use std::task::{Context, Poll};

use common::{Pki, TestServer, tls_channel};
use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{ProduceRequest, Record};
use proglog_raft::Fsync;
use proglog_server::{Authorizer, ExtraService, ServerConfig, ServerError};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The extra service's ACL action.
const TEST_ACTION: &str = "test-action";
/// The extra service's request message limit.
const MAX_MESSAGE_BYTES: usize = 64;

/// Allows [`TEST_ACTION`] to `alice` only, everything else to everyone.
struct OnlyAlice;

impl Authorizer for OnlyAlice {
    fn is_allowed(&self, subject: &str, _object: &str, action: &str) -> bool {
        action != TEST_ACTION || subject == "alice"
    }
}

/// A tonic service served under another name: requests to
/// `/proglog.test.v1.Health/...` reach `S` as `/<S::NAME>/...`.
#[derive(Clone)]
struct Renamed<S>(S);

impl<S> NamedService for Renamed<S> {
    const NAME: &'static str = "proglog.test.v1.Health";
}

impl<S: NamedService> tower::Service<http::Request<tonic::body::Body>> for Renamed<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> S::Future {
        let path = request.uri().path().replacen(<Self as NamedService>::NAME, S::NAME, 1);
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = Some(path.parse().unwrap());
        *request.uri_mut() = http::Uri::from_parts(parts).unwrap();
        self.0.call(request)
    }
}

async fn renamed_health() -> ExtraService {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    ExtraService::new(Renamed(service), TEST_ACTION, MAX_MESSAGE_BYTES)
}

/// A mutual-TLS server with the renamed health service and [`OnlyAlice`].
async fn server(pki: &Pki) -> TestServer {
    let config = ServerConfig {
        tls: Some(pki.tls_files(true)),
        extra_services: vec![renamed_health().await],
        ..ServerConfig::default()
    };
    TestServer::start_with(config, Arc::new(OnlyAlice), Fsync::Never).await
}

fn channel_as(pki: &Pki, server: &TestServer, subject: &str) -> Channel {
    tls_channel(pki, server.addr, Some(&pki.ca.client_cert(subject).unwrap()))
}

/// A unary call to `path` with a health check request for `service`.
async fn call(channel: Channel, path: &'static str, service: &str) -> Result<HealthCheckResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|error| Status::unavailable(error.to_string()))?;
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    let request = tonic::Request::new(HealthCheckRequest { service: service.into() });
    let response = grpc.unary(request, http::uri::PathAndQuery::from_static(path), codec).await?;
    Ok(response.into_inner())
}

const CHECK: &str = "/proglog.test.v1.Health/Check";

#[tokio::test]
async fn an_extra_service_serves_only_the_subjects_its_action_allows() {
    let pki = Pki::new();
    let server = server(&pki).await;
    let alice = channel_as(&pki, &server, "alice");
    let bob = channel_as(&pki, &server, "bob");

    let response = call(alice.clone(), CHECK, "").await.unwrap();
    assert_eq!(response.status(), ServingStatus::Serving);

    let status = call(bob.clone(), CHECK, "").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "bob not permitted to test-action to *");
    // A method the service lacks still needs its action, and then is unimplemented.
    let status = call(bob.clone(), "/proglog.test.v1.Health/Nope", "").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = call(alice.clone(), "/proglog.test.v1.Health/Nope", "").await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // Paths nobody serves need no action, as before.
    let status = call(bob.clone(), "/nobody.v1.Knows/This", "").await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // The built-in services are unchanged beside it.
    let record = Record { value: "hello".into(), ..Default::default() };
    let produced = LogClient::new(bob)
        .produce(ProduceRequest { record: Some(record), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(produced.into_inner().offset, 0);
    let response = call(alice, "/grpc.health.v1.Health/Check", "log.v1.Log").await.unwrap();
    assert_eq!(response.status(), ServingStatus::Serving);
    server.stop().await;
}

#[tokio::test]
async fn an_extra_service_message_over_its_limit_is_refused_and_the_connection_stays_usable() {
    let pki = Pki::new();
    let server = server(&pki).await;
    let alice = channel_as(&pki, &server, "alice");
    let long = "x".repeat(MAX_MESSAGE_BYTES);
    let status = call(alice.clone(), CHECK, &long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let expected = format!("request message of {} bytes exceeds the limit of 64 bytes", long.len() + 2);
    assert_eq!(status.message(), expected);
    // The same limit on the built-in health service is 64 KiB: this one passes there.
    let status = call(alice.clone(), "/grpc.health.v1.Health/Check", &long).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "an unknown service name, read and answered: {status:?}");
    assert_eq!(call(alice, CHECK, "").await.unwrap().status(), ServingStatus::Serving);
    server.stop().await;
}

#[tokio::test]
async fn an_extra_service_may_not_take_a_name_already_served() {
    let serve_with = |extra_services: Vec<ExtraService>| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let log = proglog_log::Log::open(data.path(), proglog_log::Config::default()).unwrap();
        let log = Arc::new(proglog_raft::LocalLog::new(log, Fsync::Never, "n", "127.0.0.1:1").unwrap());
        let config = ServerConfig { extra_services, ..ServerConfig::default() };
        let served =
            proglog_server::serve(listener, log.clone(), Arc::new(OnlyAlice), config, async {}).await;
        log.close().unwrap();
        served
    };
    let (_, health) = tonic_health::server::health_reporter();
    for extras in [
        vec![ExtraService::new(health, TEST_ACTION, 1024)],
        vec![renamed_health().await, renamed_health().await],
        vec![ExtraService::new(Renamed(tonic_health::server::health_reporter().1), "", 1024)],
        vec![ExtraService::new(Renamed(tonic_health::server::health_reporter().1), TEST_ACTION, 0)],
    ] {
        let names: Vec<&str> = extras.iter().map(ExtraService::name).collect();
        match serve_with(extras).await {
            Err(ServerError::Config(message)) => assert!(message.starts_with("extra service "), "{message}"),
            other => panic!("{names:?}: {other:?}"),
        }
    }
}
