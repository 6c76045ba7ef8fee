//! `log.v1.Log` without storage, served by tonic alone: what the transport
//! costs, the floor under every served log.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use proglog_api::v1::log_server::{Log as LogRpc, LogServer};
use proglog_api::v1::{
    CommitOffsetRequest, CommitOffsetResponse, ConsumeRequest, ConsumeResponse, FetchOffsetRequest,
    FetchOffsetResponse, GetOffsetsRequest, GetOffsetsResponse, GetServersRequest, GetServersResponse,
    InitProducerRequest, InitProducerResponse, ProduceRequest, ProduceResponse, Record,
};
use proglog_api::v1::{
    CreateLogRequest, CreateLogResponse, DeleteLogRequest, DeleteLogResponse, ListLogsRequest,
    ListLogsResponse,
};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::{MAX_RECORD_BYTES, POOL, Running, listen};

/// The decode limit `serve` uses (a private helper there): the same for the null server.
fn decode_limit() -> usize {
    (MAX_RECORD_BYTES * 2 + (64 << 10)) as usize
}

// ---------------------------------------------------------------- the null service

/// `log.v1.Log` without storage: the transport ceiling.
struct NullLog {
    counter: Arc<AtomicU64>,
    pool: Arc<Vec<Bytes>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl LogRpc for NullLog {
    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        drop(request);
        Ok(Response::new(ProduceResponse { offset: self.counter.fetch_add(1, Ordering::Relaxed) }))
    }

    async fn consume(&self, request: Request<ConsumeRequest>) -> Result<Response<ConsumeResponse>, Status> {
        let offset = request.into_inner().offset;
        let value = self.pool[offset as usize % POOL].clone();
        Ok(Response::new(ConsumeResponse { record: Some(Record { value, offset, ..Record::default() }) }))
    }

    type ConsumeStreamStream = BoxStream<ConsumeResponse>;

    async fn consume_stream(
        &self,
        request: Request<ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
        let from = request.into_inner().offset;
        let pool = Arc::clone(&self.pool);
        let records = tokio_stream::iter((from..).map(move |offset| {
            let value = pool[offset as usize % POOL].clone();
            Ok(ConsumeResponse { record: Some(Record { value, offset, ..Record::default() }) })
        }));
        Ok(Response::new(Box::pin(records)))
    }

    type ProduceStreamStream = BoxStream<ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let counter = Arc::clone(&self.counter);
        let responses = request.into_inner().map(move |request| {
            request.map(|_| ProduceResponse { offset: counter.fetch_add(1, Ordering::Relaxed) })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn get_servers(
        &self,
        _request: Request<GetServersRequest>,
    ) -> Result<Response<GetServersResponse>, Status> {
        Ok(Response::new(GetServersResponse { servers: vec![] }))
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
        Err(Status::unimplemented("the null service has no idempotent producers"))
    }

    async fn commit_offset(
        &self,
        _: Request<CommitOffsetRequest>,
    ) -> Result<Response<CommitOffsetResponse>, Status> {
        Err(Status::unimplemented("the null service keeps no consumer positions"))
    }

    async fn fetch_offset(
        &self,
        _: Request<FetchOffsetRequest>,
    ) -> Result<Response<FetchOffsetResponse>, Status> {
        Err(Status::unimplemented("the null service keeps no consumer positions"))
    }

    async fn create_log(&self, _: Request<CreateLogRequest>) -> Result<Response<CreateLogResponse>, Status> {
        Err(Status::unimplemented("the null service has no named logs"))
    }

    async fn delete_log(&self, _: Request<DeleteLogRequest>) -> Result<Response<DeleteLogResponse>, Status> {
        Err(Status::unimplemented("the null service has no named logs"))
    }

    async fn list_logs(&self, _: Request<ListLogsRequest>) -> Result<Response<ListLogsResponse>, Status> {
        Err(Status::unimplemented("the null service has no named logs"))
    }
}

pub fn start_null(rt: &Runtime, pool: Arc<Vec<Bytes>>) -> Result<Running> {
    let listener = listen(rt)?;
    let addr = listener.local_addr()?;
    let service = LogServer::new(NullLog { counter: Arc::new(AtomicU64::new(0)), pool })
        .max_decoding_message_size(decode_limit())
        .max_encoding_message_size(decode_limit());
    let (stop, stopped) = oneshot::channel::<()>();
    // The transport at its best: tonic's own acceptor with TCP_NODELAY, its default
    // when it binds the address itself.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
        incoming,
        async {
            let _ = stopped.await;
        },
    );
    let task = rt.spawn(async move { serving.await.context("null server") });
    Ok(Running { addr, stop, task, log: None })
}
