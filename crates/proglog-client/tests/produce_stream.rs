//! The produce stream against a scripted fake cluster: two servers share one
//! log; the test makes the leader fail one record in a chosen way and checks
//! each value's result and what the log holds, for both delivery modes.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use proglog_api::v1::log_server::Log;
use proglog_api::v1::{
    CommitOffsetRequest, CommitOffsetResponse, ConsumeRequest, ConsumeResponse, CreateLogRequest,
    CreateLogResponse, DeleteLogRequest, DeleteLogResponse, FetchOffsetRequest, FetchOffsetResponse,
    GetOffsetsRequest, GetOffsetsResponse, GetServersRequest, GetServersResponse, InitProducerRequest,
    InitProducerResponse, ListLogsRequest, ListLogsResponse, ProduceRequest, ProduceResponse, Server,
};
use proglog_client::{Client, Delivery, Error, Options};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

/// How the leader fails the record at the scripted position.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// Appends it, then the stream fails without answering: outcome unknown.
    AppendedUnanswered,
    /// Refuses it as not the leader (appends nothing) and hands leadership
    /// to the other server.
    NotLeader,
    /// Never answers it, nor anything after it, on that call (a leader cut
    /// off from its peers); appends nothing.
    Silent,
}

#[derive(Default)]
struct Cluster {
    log: Vec<Bytes>,
    leader: usize,
    addrs: Vec<String>,
    /// Fail the record that would get this offset, once.
    fail_at: Option<(u64, Failure)>,
}

type Shared = Arc<Mutex<Cluster>>;

struct Fake {
    number: usize,
    cluster: Shared,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn not_leader() -> Status {
    let details = ErrorDetails::with_error_info("NOT_LEADER", "proglog", HashMap::new());
    Status::with_error_details(Code::Unavailable, "not the leader", details)
}

#[tonic::async_trait]
impl Log for Fake {
    async fn produce(&self, _: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn consume(&self, _: Request<ConsumeRequest>) -> Result<Response<ConsumeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type ConsumeStreamStream = Boxed<ConsumeResponse>;

    async fn consume_stream(
        &self,
        _: Request<ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type ProduceStreamStream = Boxed<ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (cluster, number) = (Arc::clone(&self.cluster), self.number);
        tokio::spawn(async move {
            let mut silent = false;
            while let Ok(Some(request)) = inbound.message().await {
                let value = request.record.unwrap().value;
                let answer = {
                    let mut cluster = cluster.lock().unwrap();
                    let offset = cluster.log.len() as u64;
                    if cluster.leader != number {
                        Err(not_leader())
                    } else {
                        match cluster.fail_at {
                            Some((at, failure)) if at == offset => {
                                cluster.fail_at = None;
                                match failure {
                                    Failure::AppendedUnanswered => {
                                        cluster.log.push(value);
                                        Err(Status::unavailable("connection lost"))
                                    }
                                    Failure::NotLeader => {
                                        cluster.leader = 1 - number;
                                        Err(not_leader())
                                    }
                                    Failure::Silent => {
                                        silent = true;
                                        break;
                                    }
                                }
                            }
                            _ => {
                                cluster.log.push(value);
                                Ok(ProduceResponse { offset })
                            }
                        }
                    }
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
            if silent {
                let _keep_the_call_open = (tx, inbound);
                std::future::pending::<()>().await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_servers(
        &self,
        _: Request<GetServersRequest>,
    ) -> Result<Response<GetServersResponse>, Status> {
        let cluster = self.cluster.lock().unwrap();
        let servers = (cluster.addrs.iter().enumerate())
            .map(|(i, addr)| Server {
                id: format!("s{i}"),
                rpc_addr: addr.clone(),
                is_leader: i == cluster.leader,
            })
            .collect();
        Ok(Response::new(GetServersResponse { servers }))
    }

    async fn get_offsets(
        &self,
        _: Request<GetOffsetsRequest>,
    ) -> Result<Response<GetOffsetsResponse>, Status> {
        let next = self.cluster.lock().unwrap().log.len() as u64;
        Ok(Response::new(GetOffsetsResponse { lowest: 0, next }))
    }

    async fn init_producer(
        &self,
        _: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        Err(Status::unimplemented("the fake cluster has no idempotent producers"))
    }

    async fn commit_offset(
        &self,
        _: Request<CommitOffsetRequest>,
    ) -> Result<Response<CommitOffsetResponse>, Status> {
        Err(Status::unimplemented("the fake cluster keeps no consumer positions"))
    }

    async fn fetch_offset(
        &self,
        _: Request<FetchOffsetRequest>,
    ) -> Result<Response<FetchOffsetResponse>, Status> {
        Err(Status::unimplemented("the fake cluster keeps no consumer positions"))
    }

    async fn create_log(&self, _: Request<CreateLogRequest>) -> Result<Response<CreateLogResponse>, Status> {
        Err(Status::unimplemented("the fake cluster has the default log only"))
    }

    async fn delete_log(&self, _: Request<DeleteLogRequest>) -> Result<Response<DeleteLogResponse>, Status> {
        Err(Status::unimplemented("the fake cluster has the default log only"))
    }

    async fn list_logs(&self, _: Request<ListLogsRequest>) -> Result<Response<ListLogsResponse>, Status> {
        Err(Status::unimplemented("the fake cluster has the default log only"))
    }
}

async fn cluster(fail_at: u64, failure: Failure, delivery: Delivery) -> (Shared, Client) {
    cluster_with(fail_at, failure, Options { delivery, ..Options::default() }).await
}

async fn cluster_with(fail_at: u64, failure: Failure, options: Options) -> (Shared, Client) {
    let shared = Shared::default();
    for number in 0..2 {
        let addr = common::serve(Fake { number, cluster: Arc::clone(&shared) }).await;
        shared.lock().unwrap().addrs.push(addr);
    }
    shared.lock().unwrap().fail_at = Some((fail_at, failure));
    let addr = format!("proglog://{}", shared.lock().unwrap().addrs[0]);
    let options = Options { failover_timeout: Duration::from_secs(5), ..options };
    (shared.clone(), Client::connect(&addr, options).await.unwrap())
}

fn values(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("v{i}"))).collect()
}

/// Each value's result, sending the next value only once the previous one
/// has its result (one in flight).
async fn one_at_a_time(client: &Client, values: &[Bytes]) -> Vec<Result<u64, Error>> {
    let (tx, rx) = mpsc::channel(1);
    let mut stream = client.produce_stream(ReceiverStream::new(rx));
    let mut results = Vec::new();
    for value in values {
        tx.send(value.clone()).await.unwrap();
        results.push(stream.next().await.unwrap());
    }
    drop(tx);
    assert!(stream.next().await.is_none());
    results
}

#[tokio::test]
async fn a_record_refused_as_not_leader_goes_to_the_new_leader() {
    let (cluster, client) = cluster(3, Failure::NotLeader, Delivery::AtMostOnce).await;
    let values = values(8);
    let results = one_at_a_time(&client, &values).await;
    let offsets: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(offsets, (0..8).collect::<Vec<_>>(), "every value, once, in order");
    let cluster = cluster.lock().unwrap();
    assert_eq!(cluster.log, values);
    assert_eq!(cluster.leader, 1, "the rest went to the new leader");
}

#[tokio::test]
async fn at_most_once_reports_an_unanswered_record_as_unknown_and_goes_on() {
    let (cluster, client) = cluster(3, Failure::AppendedUnanswered, Delivery::AtMostOnce).await;
    let values = values(8);
    let results = one_at_a_time(&client, &values).await;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(offset) => assert_eq!(cluster.lock().unwrap().log[*offset as usize], values[i]),
            Err(Error::OutcomeUnknown { .. }) => assert_eq!(i, 3, "only the failed record"),
            Err(other) => panic!("value {i}: {other}"),
        }
    }
    assert!(results[3].is_err());
    // It was appended (the fake says so), and not sent again.
    assert_eq!(cluster.lock().unwrap().log, values);
}

#[tokio::test]
async fn at_least_once_sends_an_unanswered_record_again() {
    let (cluster, client) = cluster(3, Failure::AppendedUnanswered, Delivery::AtLeastOnce).await;
    let values = values(8);
    let results = one_at_a_time(&client, &values).await;
    let offsets: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(offsets, [0, 1, 2, 4, 5, 6, 7, 8], "the retry got offset 4");
    let log = cluster.lock().unwrap().log.clone();
    assert_eq!(log[3], log[4], "stored twice: the price of at-least-once");
}

#[tokio::test]
async fn pipelined_values_each_get_one_result_in_order() {
    let (cluster, client) = cluster(500, Failure::AppendedUnanswered, Delivery::AtMostOnce).await;
    let values = values(2000);
    let results = client.produce_many(values.clone()).await;
    assert_eq!(results.len(), values.len());
    let log = cluster.lock().unwrap().log.clone();
    let mut unknown = 0;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(offset) => assert_eq!(log[*offset as usize], values[i], "value {i}"),
            Err(Error::OutcomeUnknown { .. }) => unknown += 1,
            Err(other) => panic!("value {i}: {other}"),
        }
    }
    assert!(unknown >= 1, "the failed record and those in flight with it");
    // Never stored twice, and nothing acknowledged is missing.
    assert!(log.len() <= values.len());
    let mut seen = std::collections::HashSet::new();
    assert!(log.iter().all(|value| seen.insert(value.clone())), "a value stored twice");
}

#[tokio::test]
async fn a_leader_that_stops_answering_is_left_after_the_request_timeout() {
    let options = Options { request_timeout: Duration::from_millis(300), ..Options::default() };
    let (cluster, client) = cluster_with(3, Failure::Silent, options).await;
    let values = values(6);
    let results = one_at_a_time(&client, &values).await;
    assert!(matches!(results[3], Err(Error::OutcomeUnknown { .. })), "{:?}", results[3]);
    let offsets: Vec<u64> = results.iter().filter_map(|result| result.as_ref().ok().copied()).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4], "the rest on a new call");
    assert_eq!(cluster.lock().unwrap().log.len(), 5);
}
