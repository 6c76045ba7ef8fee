//! The `log.v1.Log` service. Calls reach it already admitted (authorized, their
//! request bodies bounded: see `admit`); what each stream holds is bounded here,
//! in bytes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::trace::{FutureExt, TraceContextExt};
use proglog_api::v1::log_server::Log as LogRpc;
use proglog_api::v1::{
    CommitOffsetRequest, CommitOffsetResponse, ConsumeRequest, ConsumeResponse, CreateLogRequest,
    CreateLogResponse, DeleteLogRequest, DeleteLogResponse, FetchOffsetRequest, FetchOffsetResponse,
    GetOffsetsRequest, GetOffsetsResponse, GetServersRequest, GetServersResponse, InitProducerRequest,
    InitProducerResponse, ListLogsRequest, ListLogsResponse, LogInfo, ProduceRequest, ProduceResponse,
    Record, Server,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use proglog_raft::{Append, Catalog, CommitLog, LogError, PendingAppend, check_record_size};

use crate::auth::{Authorizer, action};
use crate::observe::OffsetSlot;
use crate::status::{from_log, permission_denied};

/// The gRPC metadata key naming the log a call acts on (SPEC §11; absent or
/// empty: the default log).
pub const LOG_METADATA: &str = "proglog-log";

/// The log name a call's metadata gives (admission checked it already).
pub(crate) fn log_name(metadata: &tonic::metadata::MetadataMap) -> Result<&str, Status> {
    match metadata.get(LOG_METADATA) {
        None => Ok(""),
        Some(value) => {
            let name = value
                .to_str()
                .map_err(|_| Status::invalid_argument(format!("{LOG_METADATA} is not ASCII")))?;
            proglog_raft::check_log_name(name).map_err(from_log)?;
            Ok(name)
        }
    }
}

/// Bytes read from the log per step of a ConsumeStream.
const CONSUME_STREAM_READ_BYTES: u64 = 128 << 10;
/// Record bytes a ConsumeStream holds that its client has not taken yet (read
/// ahead, or waiting for HTTP/2 flow control): two read steps, or one record if
/// it is larger.
const CONSUME_STREAM_BUFFER_BYTES: usize = 2 * CONSUME_STREAM_READ_BYTES as usize;
/// Requests of one ProduceStream read ahead and not yet answered, at most.
pub const PRODUCE_STREAM_WINDOW: usize = 1024;
/// Record bytes one ProduceStream holds between reading them and their commit
/// (one record if it is larger).
const PRODUCE_STREAM_BUFFER_BYTES: usize = 1 << 20;
/// Batches of one ProduceStream appended and not yet committed, at most.
const PRODUCE_STREAM_BATCHES_IN_FLIGHT: usize = 8;

/// Bytes a stream's buffer takes from its semaphore at a time, to hand out
/// record by record.
const BUFFER_CHUNK_BYTES: usize = 64 << 10;

/// The byte budget of one stream. Bytes are handed out record by record from a
/// pool refilled in chunks and returned a batch at a time, so that most records
/// cost no semaphore operation (a tokio semaphore takes a lock on each release).
struct StreamBuffer {
    semaphore: Arc<Semaphore>,
    capacity: usize,
    pool: Option<OwnedSemaphorePermit>,
}

impl StreamBuffer {
    fn new(capacity: usize) -> Self {
        Self { semaphore: Arc::new(Semaphore::new(capacity)), capacity, pool: None }
    }

    /// Holds `bytes` until the returned permit drops, waiting for them; capped at
    /// what the pool and the rest of the buffer can hold, so one record always
    /// fits. `None` only if the semaphore was closed, which this module never does.
    async fn hold(&mut self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let pooled = self.pool.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        let bytes = bytes.min(self.capacity);
        if pooled < bytes {
            let wanted = (bytes - pooled).max(BUFFER_CHUNK_BYTES).min(self.capacity - pooled);
            let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
            let more = Arc::clone(&self.semaphore).acquire_many_owned(wanted).await.ok()?;
            match &mut self.pool {
                Some(pool) => pool.merge(more),
                None => self.pool = Some(more),
            }
        }
        self.pool.as_mut()?.split(bytes)
    }
}

/// Merges `permit` into `held` (one release for a whole batch).
fn merge(held: &mut Option<OwnedSemaphorePermit>, permit: Option<OwnedSemaphorePermit>) {
    match (held.as_mut(), permit) {
        (Some(held), Some(permit)) => held.merge(permit),
        (None, permit) => *held = permit,
        (Some(_), None) => {}
    }
}

/// The gRPC service over the logs of a [`Catalog`].
pub struct LogService {
    logs: Arc<dyn Catalog>,
    authorizer: Arc<dyn Authorizer>,
    /// A produce to a log that does not exist creates it (`--auto-create-logs`).
    auto_create: bool,
    max_record_bytes: u64,
    /// Flips to `true` when the server shuts down; ends the streams.
    shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for LogService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogService").field("max_record_bytes", &self.max_record_bytes).finish_non_exhaustive()
    }
}

impl LogService {
    pub(crate) fn new(
        logs: Arc<dyn Catalog>,
        authorizer: Arc<dyn Authorizer>,
        auto_create: bool,
        max_record_bytes: u64,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self { logs, authorizer, auto_create, max_record_bytes, shutdown }
    }

    /// The log a call's metadata names.
    fn log<T>(&self, request: &Request<T>) -> Result<Arc<dyn CommitLog>, Status> {
        self.logs.get(log_name(request.metadata())?).map_err(from_log)
    }

    /// The log a produce call names: one that does not exist is created
    /// first if the server creates logs on a first produce and the caller may
    /// create it (`admin` on its name, as for CreateLog: a producer alone
    /// cannot use up the bound on logs).
    async fn log_to_produce<T>(&self, request: &Request<T>) -> Result<Arc<dyn CommitLog>, Status> {
        let name = log_name(request.metadata())?;
        match self.logs.get(name) {
            Err(LogError::NotFound(_)) if self.auto_create => {
                self.authorize_admin(request, name)?;
                self.logs.get_or_create(name).await.map_err(from_log)
            }
            found => found.map_err(from_log),
        }
    }

    /// Refuses a caller that may not administer log `name` (authorized once
    /// the body naming it is decoded; admission could not).
    fn authorize_admin<T>(&self, request: &Request<T>, name: &str) -> Result<(), Status> {
        let subject = crate::Peer::of(request.extensions()).map(|peer| peer.subject().to_owned());
        let subject = subject.ok_or_else(|| Status::internal("call without a connection peer"))?;
        let object = crate::auth::object_of(name);
        if self.authorizer.is_allowed(&subject, object, action::ADMIN) {
            Ok(())
        } else {
            Err(permission_denied(&subject, action::ADMIN, object))
        }
    }
}

/// The value of a produce request, checked against the record limit.
/// A record as `log.v1` carries it.
fn wire_record(record: proglog_raft::Record) -> Record {
    Record {
        value: record.value,
        offset: record.offset,
        term: record.term,
        r#type: 0,
        timestamp_ms: record.timestamp_ms,
    }
}

/// A server as `log.v1` lists it.
fn wire_server(server: proglog_raft::ServerInfo) -> Server {
    Server { id: server.id, rpc_addr: server.rpc_addr, is_leader: server.is_leader }
}

fn value_of(request: ProduceRequest, max_record_bytes: u64) -> Result<(Bytes, Option<(u64, u64)>), Status> {
    let producer = (request.producer_id != 0).then_some((request.producer_id, request.sequence));
    let record = request.record.ok_or_else(|| Status::invalid_argument("produce request has no record"))?;
    check_record_size(record.value.len(), max_record_bytes).map_err(from_log)?;
    Ok((record.value, producer))
}

/// The append of `values`, as sequences of `producer` if given.
fn append_of(values: Vec<Bytes>, producer: Option<(u64, u64)>) -> Append {
    let append = Append::new(values);
    match producer {
        Some((id, sequence)) => append.with_producer(id, sequence),
        None => append,
    }
}

/// Whether a value of `next` (its producer and sequence) may join a batch of
/// `count` values of `batch`: both without a producer, or the same producer's
/// next sequence.
fn continues(batch: Option<(u64, u64)>, count: u64, next: Option<(u64, u64)>) -> bool {
    match (batch, next) {
        (None, None) => true,
        (Some((id, first)), Some((next_id, sequence))) => {
            id == next_id && first.checked_add(count) == Some(sequence)
        }
        _ => false,
    }
}

#[tonic::async_trait]
impl LogRpc for LogService {
    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        let log = self.log_to_produce(&request).await?;
        let (_, extensions, request) = request.into_parts();
        let (value, producer) = value_of(request, self.max_record_bytes)?;
        let append = append_of(vec![value], producer);
        let offset = log.append(append).await.map_err(from_log)?.await.map_err(from_log)?;
        OffsetSlot::note(&extensions, offset);
        Ok(Response::new(ProduceResponse { offset }))
    }

    async fn consume(&self, request: Request<ConsumeRequest>) -> Result<Response<ConsumeResponse>, Status> {
        let log = self.log(&request)?;
        let offset = request.get_ref().offset;
        OffsetSlot::note(request.extensions(), offset);
        if request.get_ref().linearizable {
            log.linearize().await.map_err(from_log)?;
        }
        let record = log.read(offset).await.map_err(from_log)?;
        Ok(Response::new(ConsumeResponse { record: Some(wire_record(record)) }))
    }

    type ConsumeStreamStream = RecordStream;

    async fn consume_stream(
        &self,
        request: Request<ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
        let log = self.log(&request)?;
        let offset = request.get_ref().offset;
        OffsetSlot::note(request.extensions(), offset);
        if request.get_ref().linearizable {
            // The stream starts from a linearizable point, then follows the tail.
            log.linearize().await.map_err(from_log)?;
        }
        if offset < log.lowest_offset() {
            return Err(from_log(LogError::OutOfRange { offset }));
        }
        // Batches are bounded in bytes by the semaphore; the channel only hands
        // them over.
        let (tx, rx) = mpsc::channel(2);
        // The call's span stays current in the tasks that serve it.
        let trace = opentelemetry::Context::current();
        tokio::spawn(follow(log, offset, tx, self.shutdown.clone()).with_context(trace));
        Ok(Response::new(RecordStream { batches: rx, batch: VecDeque::new(), held: None }))
    }

    type ProduceStreamStream = ReceiverStream<Result<ProduceResponse, Status>>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let log = self.log_to_produce(&request).await?;
        let inbound = request.into_inner();
        // Requests read ahead: validated values, or the error that ends the stream.
        let (values_tx, values_rx) = mpsc::channel(PRODUCE_STREAM_WINDOW);
        let (tx, rx) = mpsc::channel(PRODUCE_STREAM_WINDOW);
        let reader = read_requests(inbound, self.max_record_bytes, values_tx, self.shutdown.clone());
        let trace = opentelemetry::Context::current();
        tokio::spawn(reader.with_context(trace.clone()));
        tokio::spawn(append_in_order(log, values_rx, tx).with_context(trace));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_servers(
        &self,
        request: Request<GetServersRequest>,
    ) -> Result<Response<GetServersResponse>, Status> {
        let servers = self.log(&request)?.servers().await.map_err(from_log)?;
        let servers = servers.into_iter().map(wire_server).collect();
        Ok(Response::new(GetServersResponse { servers }))
    }

    async fn get_offsets(
        &self,
        request: Request<GetOffsetsRequest>,
    ) -> Result<Response<GetOffsetsResponse>, Status> {
        let log = self.log(&request)?;
        // The commit point first: retention only ever raises the lowest offset,
        // so `lowest <= next` even if it moves in between.
        let next = *log.committed().borrow();
        let lowest = log.lowest_offset().min(next);
        Ok(Response::new(GetOffsetsResponse { lowest, next }))
    }

    async fn commit_offset(
        &self,
        request: Request<CommitOffsetRequest>,
    ) -> Result<Response<CommitOffsetResponse>, Status> {
        let log = self.log(&request)?;
        let CommitOffsetRequest { group, offset } = request.into_inner();
        log.commit_offset(&group, offset).await.map_err(from_log)?;
        Ok(Response::new(CommitOffsetResponse {}))
    }

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        let producer_id = self.log_to_produce(&request).await?.init_producer().await.map_err(from_log)?;
        Ok(Response::new(InitProducerResponse { producer_id }))
    }

    async fn fetch_offset(
        &self,
        request: Request<FetchOffsetRequest>,
    ) -> Result<Response<FetchOffsetResponse>, Status> {
        let position = self.log(&request)?.fetch_offset(&request.get_ref().group).await.map_err(from_log)?;
        Ok(Response::new(FetchOffsetResponse { offset: position.unwrap_or(0), found: position.is_some() }))
    }

    async fn create_log(
        &self,
        request: Request<CreateLogRequest>,
    ) -> Result<Response<CreateLogResponse>, Status> {
        let name = request.get_ref().name.clone();
        proglog_raft::check_log_name(&name).map_err(from_log)?;
        self.authorize_admin(&request, &name)?;
        let CreateLogRequest { retention_bytes, retention_ms, .. } = request.into_inner();
        self.logs.create(&name, retention_bytes, retention_ms).await.map_err(from_log)?;
        Ok(Response::new(CreateLogResponse {}))
    }

    async fn delete_log(
        &self,
        request: Request<DeleteLogRequest>,
    ) -> Result<Response<DeleteLogResponse>, Status> {
        let name = request.get_ref().name.clone();
        proglog_raft::check_log_name(&name).map_err(from_log)?;
        self.authorize_admin(&request, &name)?;
        self.logs.delete(&name).await.map_err(from_log)?;
        Ok(Response::new(DeleteLogResponse {}))
    }

    /// Authorized (`admin` on `*`) from the headers.
    async fn list_logs(
        &self,
        _request: Request<ListLogsRequest>,
    ) -> Result<Response<ListLogsResponse>, Status> {
        let logs = self.logs.list().into_iter().map(wire_log).collect();
        Ok(Response::new(ListLogsResponse { logs }))
    }
}

/// A log as `ListLogs` reports it.
fn wire_log(info: proglog_raft::LogInfo) -> LogInfo {
    let status = info.status;
    let next = status.highest_offset.map_or(status.lowest_offset, |highest| highest + 1);
    LogInfo {
        name: info.name,
        lowest: status.lowest_offset.min(next),
        next,
        retention_bytes: info.retention_bytes,
        retention_ms: info.retention_ms,
        bytes: status.bytes,
    }
}

/// A batch of records for a ConsumeStream, with the buffer bytes it holds.
type Batch = (VecDeque<Record>, Option<OwnedSemaphorePermit>);

/// The records of a ConsumeStream, one response each; a batch's buffer bytes are
/// released once its last record has been handed to the transport.
pub struct RecordStream {
    batches: mpsc::Receiver<Result<Batch, Status>>,
    batch: VecDeque<Record>,
    held: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for RecordStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream").field("batch", &self.batch.len()).finish_non_exhaustive()
    }
}

impl tokio_stream::Stream for RecordStream {
    type Item = Result<ConsumeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(record) = self.batch.pop_front() {
                if self.batch.is_empty() {
                    self.held = None;
                }
                return Poll::Ready(Some(Ok(ConsumeResponse { record: Some(record) })));
            }
            match self.batches.poll_recv(cx) {
                Poll::Ready(Some(Ok((batch, held)))) => {
                    self.batch = batch;
                    self.held = held;
                }
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(status))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Sends records from `offset` on, then waits at the tail for the commit point to
/// move (no polling). Reads only when the stream's buffer has room, so a client
/// that does not read holds at most [`CONSUME_STREAM_BUFFER_BYTES`]. Ends when
/// the client goes away, the server shuts down, or a read fails (which is sent as
/// the stream's status, after the records before the failure).
async fn follow(
    log: Arc<dyn CommitLog>,
    mut offset: u64,
    tx: mpsc::Sender<Result<Batch, Status>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buffer = StreamBuffer::new(CONSUME_STREAM_BUFFER_BYTES);
    let mut committed = log.committed();
    loop {
        let end = *committed.borrow_and_update();
        if offset < end {
            let mut held = tokio::select! {
                held = buffer.hold(CONSUME_STREAM_READ_BYTES as usize) => held,
                () = tx.closed() => return,
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            };
            let batch = match log.read_batch(offset, CONSUME_STREAM_READ_BYTES).await {
                Ok(records) => records,
                Err(error) => {
                    let _ = tx.send(Err(from_log(error))).await;
                    return;
                }
            };
            let Some(last) = batch.last() else { continue };
            offset = last.offset + 1;
            // A record larger than a read step takes the rest of the buffer.
            let bytes: usize = batch.iter().map(|record| record.value.len()).sum();
            if let Some(extra) = bytes.checked_sub(CONSUME_STREAM_READ_BYTES as usize) {
                let room = CONSUME_STREAM_BUFFER_BYTES - CONSUME_STREAM_READ_BYTES as usize;
                merge(&mut held, buffer.hold(extra.min(room)).await);
            }
            if tx.send(Ok((batch.into_iter().map(wire_record).collect(), held))).await.is_err() {
                return;
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

/// A value read ahead, with the stream buffer bytes it holds until committed.
type ReadAhead = Result<(Bytes, Option<(u64, u64)>, Option<OwnedSemaphorePermit>), Status>;

/// Reads a ProduceStream's requests ahead of the appends, validating each, as
/// long as the stream's buffer has room for them ([`PRODUCE_STREAM_BUFFER_BYTES`],
/// [`PRODUCE_STREAM_WINDOW`] requests). An invalid request, or the server's
/// shutdown, is forwarded as the error ending the stream.
async fn read_requests(
    mut inbound: Streaming<ProduceRequest>,
    max_record_bytes: u64,
    values: mpsc::Sender<ReadAhead>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buffer = StreamBuffer::new(PRODUCE_STREAM_BUFFER_BYTES);
    // One waiter for the whole stream, polled only when no request is ready.
    let mut stopping = std::pin::pin!(shutdown.wait_for(|stopping| *stopping));
    loop {
        let message = tokio::select! {
            biased;
            message = inbound.message() => message,
            _ = &mut stopping => Err(from_log(LogError::Unavailable("the server is shutting down".into()))),
        };
        let item = match message {
            Ok(Some(request)) => value_of(request, max_record_bytes),
            Ok(None) => return,
            Err(status) => Err(status),
        };
        let item = match item {
            Ok((value, producer)) => {
                let held = buffer.hold(value.len()).await;
                Ok((value, producer, held))
            }
            Err(status) => Err(status),
        };
        let stop = item.is_err();
        if values.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// A batch appended and not yet committed: its commit, its record count, the
/// stream buffer bytes its values hold, and — for several records of an
/// idempotent producer — the values and their producer, to append one by one if
/// the batch as a whole does not follow.
type InFlight = (PendingAppend, u64, Option<OwnedSemaphorePermit>, Option<(Vec<Bytes>, (u64, u64))>);

/// The offsets of an idempotent producer's records appended one by one (after
/// their merged batch overlapped what the log holds in part: a resend after a
/// leader change, batched otherwise than before). Each is stored once.
async fn append_each(
    log: &dyn CommitLog,
    values: Vec<Bytes>,
    (id, first): (u64, u64),
) -> Result<Vec<u64>, LogError> {
    let mut offsets = Vec::with_capacity(values.len());
    for (sequence, value) in (first..).zip(values) {
        offsets.push(log.append(append_of(vec![value], Some((id, sequence)))).await?.await?);
    }
    Ok(offsets)
}

/// Appends a ProduceStream's values in request order, merging whatever has been
/// read ahead into one batch and keeping several batches in flight; answers each
/// request in order. A batch's buffer bytes are released at its commit, whether
/// or not the client reads the answers. An error ends the stream after the
/// answers for the records before it.
async fn append_in_order(
    log: Arc<dyn CommitLog>,
    mut values: mpsc::Receiver<ReadAhead>,
    tx: mpsc::Sender<Result<ProduceResponse, Status>>,
) {
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut ending: Option<Status> = None;
    let mut input_open = true;
    // A value read that could not join the batch before it (another producer,
    // or not its next sequence): the first of the next batch.
    let mut carried: Option<ReadAhead> = None;
    loop {
        let can_read = input_open && in_flight.len() < PRODUCE_STREAM_BATCHES_IN_FLIGHT;
        let oldest = in_flight.front_mut().map(|(pending, _, _, _)| pending);
        if oldest.is_none() && !input_open {
            break;
        }
        tokio::select! {
            biased;
            committed = async { Some(oldest?.await) }, if oldest.is_some() => {
                let Some((_, count, held, idempotent)) = in_flight.pop_front() else { break };
                let committed = match (committed, idempotent) {
                    (Some(Err(LogError::OutOfOrderSequence(_))), Some((values, producer))) => {
                        Some(append_each(log.as_ref(), values, producer).await)
                    }
                    (Some(result), _) => Some(result.map(|first| (first..first + count).collect())),
                    (None, _) => None,
                };
                drop(held);
                match committed {
                    Some(Ok(offsets)) => {
                        for offset in offsets {
                            if tx.send(Ok(ProduceResponse { offset })).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Err(error)) => {
                        let _ = tx.send(Err(from_log(error))).await;
                        return;
                    }
                    None => break,
                }
            }
            item = async { match carried.take() { Some(item) => Some(item), None => values.recv().await } }, if can_read => {
                let (mut batch, mut held, mut producer) = (Vec::new(), None, None);
                let mut next = item;
                loop {
                    match next {
                        Some(Ok((value, from, permit))) => {
                            if batch.is_empty() {
                                producer = from;
                            } else if !continues(producer, batch.len() as u64, from) {
                                carried = Some(Ok((value, from, permit)));
                                break;
                            }
                            batch.push(value);
                            merge(&mut held, permit);
                        }
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
                    // One event per batch on the call's span, never a span per record.
                    let trace = opentelemetry::Context::current();
                    trace.span().add_event("append", vec![KeyValue::new("records", count as i64)]);
                    let retry = producer.filter(|_| count > 1).map(|producer| (batch.clone(), producer));
                    match log.append(append_of(batch, producer)).await {
                        Ok(pending) => in_flight.push_back((pending, count, held, retry)),
                        Err(error) => { ending = Some(from_log(error)); input_open = false; }
                    }
                }
            }
        }
    }
    if let Some(status) = ending {
        let _ = tx.send(Err(status)).await;
    }
}
