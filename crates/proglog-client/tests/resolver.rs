//! The resolver and picker against fake `log.v1` servers whose GetServers
//! answer the test changes: produces reach the server listed as leader,
//! consumes alternate over the followers, and a refresh follows the change.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use proglog_api::v1::log_server::Log;
use proglog_api::v1::{
    CommitOffsetRequest, CommitOffsetResponse, ConsumeRequest, ConsumeResponse, CreateLogRequest,
    CreateLogResponse, DeleteLogRequest, DeleteLogResponse, FetchOffsetRequest, FetchOffsetResponse,
    GetOffsetsRequest, GetOffsetsResponse, GetServersRequest, GetServersResponse, InitProducerRequest,
    InitProducerResponse, ListLogsRequest, ListLogsResponse, ProduceRequest, ProduceResponse, Record, Server,
};
use proglog_client::{Client, Options};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

type Servers = Arc<Mutex<Vec<Server>>>;

/// A server that answers produces with its number and consumes with its name.
struct Fake {
    number: u64,
    name: String,
    servers: Servers,
}

type Empty<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Log for Fake {
    async fn produce(&self, _: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        Ok(Response::new(ProduceResponse { offset: self.number }))
    }

    async fn consume(&self, _: Request<ConsumeRequest>) -> Result<Response<ConsumeResponse>, Status> {
        let record = Record { value: self.name.clone().into(), ..Record::default() };
        Ok(Response::new(ConsumeResponse { record: Some(record) }))
    }

    type ConsumeStreamStream = Empty<ConsumeResponse>;

    async fn consume_stream(
        &self,
        _: Request<ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type ProduceStreamStream = Empty<ProduceResponse>;

    async fn produce_stream(
        &self,
        _: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_servers(
        &self,
        _: Request<GetServersRequest>,
    ) -> Result<Response<GetServersResponse>, Status> {
        Ok(Response::new(GetServersResponse { servers: self.servers.lock().unwrap().clone() }))
    }

    async fn get_offsets(
        &self,
        _: Request<GetOffsetsRequest>,
    ) -> Result<Response<GetOffsetsResponse>, Status> {
        Ok(Response::new(GetOffsetsResponse { lowest: 0, next: 0 }))
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

async fn start(number: u64, servers: &Servers) -> String {
    common::serve(Fake { number, name: format!("s{number}"), servers: Arc::clone(servers) }).await
}

fn listing(addrs: &[String], leader: usize) -> Vec<Server> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| Server { id: format!("s{i}"), rpc_addr: addr.clone(), is_leader: i == leader })
        .collect()
}

#[tokio::test]
async fn calls_follow_the_servers_the_cluster_reports() {
    let servers = Servers::default();
    let mut addrs = Vec::new();
    for number in 0..3 {
        addrs.push(start(number, &servers).await);
    }
    *servers.lock().unwrap() = listing(&addrs, 0);
    // One seed is enough: the rest is learned from GetServers.
    let options = Options { failover_timeout: std::time::Duration::from_millis(200), ..Options::default() };
    let client = Client::connect(&format!("proglog://{}", addrs[2]), options).await.unwrap();
    assert_eq!(client.produce("x").await.unwrap(), 0, "the leader, s0");
    let mut consumed = Vec::new();
    for _ in 0..4 {
        consumed.push(String::from_utf8(client.consume(0).await.unwrap().value.to_vec()).unwrap());
    }
    assert_eq!(consumed, ["s1", "s2", "s1", "s2"], "the followers in turn");
    assert_eq!(client.servers().await.unwrap().len(), 3);

    // The cluster elects s2: after a refresh, produces go there.
    *servers.lock().unwrap() = listing(&addrs, 2);
    client.refresh().await.unwrap();
    assert_eq!(client.produce("y").await.unwrap(), 2);

    // Without a leader, a produce says so (after waiting out the failover timeout).
    *servers.lock().unwrap() = listing(&addrs, usize::MAX);
    client.refresh().await.unwrap();
    let error = client.produce("z").await.unwrap_err();
    assert!(error.to_string().contains("no leader"), "{error}");

    // A plain host:port always dials that server.
    let single = Client::connect(&addrs[1], Options::default()).await.unwrap();
    assert_eq!(single.produce("w").await.unwrap(), 1);
    assert!(Client::connect("http://nowhere:1", Options::default()).await.is_err());
}
