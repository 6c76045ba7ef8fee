//! The `log.v1.Log` service.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use proglog_api::v1::log_server::Log as LogRpc;
use proglog_api::v1::{
    ConsumeRequest, ConsumeResponse, GetServersRequest, GetServersResponse, ProduceRequest, ProduceResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Authorizer, OBJECT_WILDCARD, action};
use crate::observe::OffsetSlot;
use crate::status::permission_denied;
use crate::{CommitLog, LogError, PendingAppend};

/// Responses buffered per ConsumeStream beyond what HTTP/2 flow control holds.
const CONSUME_STREAM_BUFFER: usize = 64;
/// Bytes read from the log per step of a ConsumeStream.
const CONSUME_STREAM_READ_BYTES: u64 = 256 << 10;
/// Requests of one ProduceStream read ahead and not yet answered, at most.
pub const PRODUCE_STREAM_WINDOW: usize = 1024;
/// Batches of one ProduceStream appended and not yet committed, at most.
const PRODUCE_STREAM_BATCHES_IN_FLIGHT: usize = 8;

/// The gRPC service over any [`CommitLog`].
pub struct LogService<L> {
    log: Arc<L>,
    authorizer: Arc<dyn Authorizer>,
    max_record_bytes: u64,
    /// Flips to `true` when the server shuts down; ends the streams.
    shutdown: watch::Receiver<bool>,
}

impl<L> std::fmt::Debug for LogService<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogService").field("max_record_bytes", &self.max_record_bytes).finish_non_exhaustive()
    }
}

impl<L: CommitLog> LogService<L> {
    pub(crate) fn new(
        log: Arc<L>,
        authorizer: Arc<dyn Authorizer>,
        max_record_bytes: u64,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self { log, authorizer, max_record_bytes, shutdown }
    }

    fn authorize<T>(&self, request: &Request<T>, action: &str) -> Result<(), Status> {
        let subject = auth::subject(request);
        if self.authorizer.is_allowed(&subject, OBJECT_WILDCARD, action) {
            Ok(())
        } else {
            Err(permission_denied(&subject, action, OBJECT_WILDCARD))
        }
    }
}

/// The value of a produce request, checked against the record limit.
fn value_of(request: ProduceRequest, max_record_bytes: u64) -> Result<Bytes, Status> {
    let record = request.record.ok_or_else(|| Status::invalid_argument("produce request has no record"))?;
    check_record_size(record.value.len(), max_record_bytes)?;
    Ok(record.value)
}

/// Rejects a record value above `max-record-bytes`, naming both sizes. Every
/// front door (gRPC, HTTP) applies this one rule.
pub fn check_record_size(bytes: usize, max_record_bytes: u64) -> Result<(), LogError> {
    if bytes as u64 > max_record_bytes {
        return Err(LogError::InvalidArgument(format!(
            "record value of {bytes} bytes exceeds max-record-bytes ({max_record_bytes} bytes)"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl<L: CommitLog> LogRpc for LogService<L> {
    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        self.authorize(&request, action::PRODUCE)?;
        let (_, extensions, request) = request.into_parts();
        let value = value_of(request, self.max_record_bytes)?;
        let offset = self.log.append(vec![value]).await?.await?;
        OffsetSlot::note(&extensions, offset);
        Ok(Response::new(ProduceResponse { offset }))
    }

    async fn consume(&self, request: Request<ConsumeRequest>) -> Result<Response<ConsumeResponse>, Status> {
        self.authorize(&request, action::CONSUME)?;
        let offset = request.get_ref().offset;
        OffsetSlot::note(request.extensions(), offset);
        let record = self.log.read(offset).await?;
        Ok(Response::new(ConsumeResponse { record: Some(record) }))
    }

    type ConsumeStreamStream = ReceiverStream<Result<ConsumeResponse, Status>>;

    async fn consume_stream(
        &self,
        request: Request<ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
        self.authorize(&request, action::CONSUME)?;
        let offset = request.get_ref().offset;
        OffsetSlot::note(request.extensions(), offset);
        if offset < self.log.lowest_offset() {
            return Err(LogError::OutOfRange { offset }.into());
        }
        let (tx, rx) = mpsc::channel(CONSUME_STREAM_BUFFER);
        tokio::spawn(follow(Arc::clone(&self.log), offset, tx, self.shutdown.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ProduceStreamStream = ReceiverStream<Result<ProduceResponse, Status>>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        self.authorize(&request, action::PRODUCE)?;
        let inbound = request.into_inner();
        // Requests read ahead: validated values, or the error that ends the stream.
        let (values_tx, values_rx) = mpsc::channel(PRODUCE_STREAM_WINDOW);
        let (tx, rx) = mpsc::channel(PRODUCE_STREAM_WINDOW);
        tokio::spawn(read_requests(inbound, self.max_record_bytes, values_tx));
        tokio::spawn(append_in_order(Arc::clone(&self.log), values_rx, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_servers(
        &self,
        _request: Request<GetServersRequest>,
    ) -> Result<Response<GetServersResponse>, Status> {
        let servers = self.log.servers().await?;
        Ok(Response::new(GetServersResponse { servers }))
    }
}

/// Sends records from `offset` on, then waits at the tail for the commit point to
/// move (no polling). Ends when the client goes away, the server shuts down, or
/// a read fails (which is sent as the stream's status).
async fn follow<L: CommitLog>(
    log: Arc<L>,
    mut offset: u64,
    tx: mpsc::Sender<Result<ConsumeResponse, Status>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut committed = log.committed();
    loop {
        let end = *committed.borrow_and_update();
        if offset < end {
            match log.read_batch(offset, CONSUME_STREAM_READ_BYTES).await {
                Ok(records) => {
                    for record in records {
                        offset = record.offset + 1;
                        // Waits while the client is slow: flow control bounds us.
                        if tx.send(Ok(ConsumeResponse { record: Some(record) })).await.is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            }
            continue;
        }
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
    }
}

/// Reads a ProduceStream's requests ahead of the appends (up to the window),
/// validating each; an invalid one is forwarded as the error ending the stream.
async fn read_requests(
    mut inbound: Streaming<ProduceRequest>,
    max_record_bytes: u64,
    values: mpsc::Sender<Result<Bytes, Status>>,
) {
    loop {
        let item = match inbound.message().await {
            Ok(Some(request)) => value_of(request, max_record_bytes),
            Ok(None) => return,
            Err(status) => Err(status),
        };
        let stop = item.is_err();
        if values.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// Appends a ProduceStream's values in request order, merging whatever has been
/// read ahead into one batch and keeping several batches in flight; answers each
/// request in order. An error ends the stream after the answers for the records
/// before it.
async fn append_in_order<L: CommitLog>(
    log: Arc<L>,
    mut values: mpsc::Receiver<Result<Bytes, Status>>,
    tx: mpsc::Sender<Result<ProduceResponse, Status>>,
) {
    let mut in_flight: VecDeque<(PendingAppend, u64)> = VecDeque::new();
    let mut ending: Option<Status> = None;
    let mut input_open = true;
    loop {
        if !input_open && in_flight.is_empty() {
            break;
        }
        let can_read = input_open && in_flight.len() < PRODUCE_STREAM_BATCHES_IN_FLIGHT;
        tokio::select! {
            biased;
            committed = async { in_flight.front_mut().map(|(pending, _)| pending) .expect("guarded").await }, if !in_flight.is_empty() => {
                let Some((_, count)) = in_flight.pop_front() else { break };
                match committed {
                    Ok(first) => {
                        for offset in first..first + count {
                            if tx.send(Ok(ProduceResponse { offset })).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                }
            }
            item = values.recv(), if can_read => {
                let mut batch = Vec::new();
                let mut next = item;
                loop {
                    match next {
                        Some(Ok(value)) => batch.push(value),
                        Some(Err(status)) => { ending = Some(status); input_open = false; break }
                        None => { input_open = false; break }
                    }
                    if batch.len() >= PRODUCE_STREAM_WINDOW {
                        break;
                    }
                    match values.try_recv() {
                        Ok(item) => next = Some(item),
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    let count = batch.len() as u64;
                    match log.append(batch).await {
                        Ok(pending) => in_flight.push_back((pending, count)),
                        Err(error) => { ending = Some(error.into()); input_open = false; }
                    }
                }
            }
        }
    }
    if let Some(status) = ending {
        let _ = tx.send(Err(status)).await;
    }
}
