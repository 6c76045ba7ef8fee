//! Admission of gRPC calls, before anything is buffered for them: the caller is
//! authorized from the connection's certificate as soon as the headers arrive
//! (a denied caller's body is never read), and every request body is read through
//! [`GrpcBody`], which enforces the per-method message size limit, the request
//! byte budgets and the body timeout while tonic decodes it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use tokio::time::Instant;
use tonic::Status;

use crate::auth::{Authorizer, OBJECT_WILDCARD, action, object_of};
use crate::listener::{Held, Peer, RequestBudget};
use crate::service::LOG_METADATA;
use crate::status;

/// Bytes a request message may take beyond the record value it carries (field
/// tags, lengths, the other `Record` fields).
pub(crate) const RECORD_MESSAGE_OVERHEAD: usize = 1 << 10;
/// Largest request message of a method that carries no record (consume, servers,
/// health, reflection).
pub(crate) const SMALL_MESSAGE_BYTES: usize = 64 << 10;
/// gRPC frames a message with a compressed flag and a big-endian u32 length.
const FRAME_HEADER_BYTES: usize = 5;

/// What admission needs to know of a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Method {
    /// The ACL action it needs, if any (GetServers, health and reflection need none).
    action: Option<&'static str>,
    /// How long its request messages may be.
    limit: MessageLimit,
    /// A unary request: its whole body must arrive within the body timeout.
    unary_request: bool,
}

/// How long a method's request messages may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MessageLimit {
    /// They carry record values: up to `max-record-bytes` plus overhead (a
    /// larger one is refused naming `max-record-bytes`).
    Records,
    /// At most this many bytes.
    Bytes(usize),
}

/// Admission rules of a service the caller added to the port
/// ([`crate::ExtraService`]): every path under `/<name>/` needs `action`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExtraRule {
    /// The gRPC service name, `pkg.Service`.
    pub(crate) name: &'static str,
    pub(crate) action: &'static str,
    pub(crate) max_message_bytes: usize,
    /// Methods whose requests are client streams.
    pub(crate) streaming_requests: Vec<&'static str>,
}

/// The method of a built-in service, or `None` for any other path.
fn built_in(path: &str) -> Option<Method> {
    let small = MessageLimit::Bytes(SMALL_MESSAGE_BYTES);
    let (action, limit, unary_request) = match path {
        "/log.v1.Log/Produce" => (Some(action::PRODUCE), MessageLimit::Records, true),
        "/log.v1.Log/ProduceStream" => (Some(action::PRODUCE), MessageLimit::Records, false),
        "/log.v1.Log/InitProducer" => (Some(action::PRODUCE), small, true),
        "/log.v1.Log/Consume"
        | "/log.v1.Log/ConsumeStream"
        | "/log.v1.Log/GetOffsets"
        | "/log.v1.Log/CommitOffset"
        | "/log.v1.Log/FetchOffset" => (Some(action::CONSUME), small, true),
        "/log.v1.Log/ListLogs" => (Some(action::ADMIN), small, true),
        // The log they act on is in their body: authorized once it is decoded.
        "/log.v1.Log/CreateLog" | "/log.v1.Log/DeleteLog" => (None, small, true),
        "/log.v1.Log/GetServers" | "/grpc.health.v1.Health/Check" | "/grpc.health.v1.Health/Watch" => {
            (None, small, true)
        }
        _ => return None,
    };
    Some(Method { action, limit, unary_request })
}

/// The method `path` names: a built-in one, one under an extra service's
/// prefix (known to that service or not: the prefix decides the action), or
/// else one that needs no action and is answered by reflection's stream or
/// tonic's UNIMPLEMENTED.
fn method(path: &str, extras: &[ExtraRule]) -> Method {
    if let Some(method) = built_in(path) {
        return method;
    }
    let (service, name) = path.strip_prefix('/').and_then(|rest| rest.split_once('/')).unwrap_or_default();
    if let Some(extra) = extras.iter().find(|extra| extra.name == service) {
        return Method {
            action: Some(extra.action),
            limit: MessageLimit::Bytes(extra.max_message_bytes),
            unary_request: !extra.streaming_requests.contains(&name),
        };
    }
    // Reflection streams requests; anything else is answered UNIMPLEMENTED.
    Method { action: None, limit: MessageLimit::Bytes(SMALL_MESSAGE_BYTES), unary_request: false }
}

/// The tower layer that admits calls to the gRPC routes.
#[derive(Clone)]
pub(crate) struct AdmitLayer {
    authorizer: Arc<dyn Authorizer>,
    max_record_bytes: u64,
    extras: Arc<[ExtraRule]>,
}

impl AdmitLayer {
    pub(crate) fn new(
        authorizer: Arc<dyn Authorizer>,
        max_record_bytes: u64,
        extras: Vec<ExtraRule>,
    ) -> Self {
        Self { authorizer, max_record_bytes, extras: extras.into() }
    }

    /// The largest request message of a method that carries records (the log
    /// service's decode limit).
    pub(crate) fn max_message_bytes(&self) -> usize {
        usize::try_from(self.max_record_bytes).unwrap_or(usize::MAX).saturating_add(RECORD_MESSAGE_OVERHEAD)
    }
}

impl<S> tower::Layer<S> for AdmitLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Admit<S> {
        Admit { inner, layer: self.clone() }
    }
}

/// See [`AdmitLayer`].
#[derive(Clone)]
pub(crate) struct Admit<S> {
    inner: S,
    layer: AdmitLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Admit<S>
where
    S: tower::Service<
            http::Request<GrpcBody<B>>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
    B: Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let reject =
            |status: Status| -> Self::Future { Box::pin(std::future::ready(Ok(status.into_http()))) };
        let Some(peer) = Peer::of(request.extensions()).cloned() else {
            return reject(Status::internal("call without a connection peer"));
        };
        let method = method(request.uri().path(), &self.layer.extras);
        // The log the call acts on (SPEC §11): its name is the ACL object.
        let object = match object(request.headers()) {
            Ok(object) => object,
            Err(status) => return reject(status),
        };
        if let Some(action) = method.action
            && !self.layer.authorizer.is_allowed(peer.subject(), object, action)
        {
            return reject(status::permission_denied(peer.subject(), action, object));
        }
        let (limit, max_record_bytes) = match method.limit {
            MessageLimit::Records => (self.layer.max_message_bytes(), Some(self.layer.max_record_bytes)),
            MessageLimit::Bytes(limit) => (limit, None),
        };
        let deadline = request.headers().get("grpc-timeout").and_then(|value| grpc_timeout(value.as_bytes()));
        let (budget, timeout) = (peer.request_budget(), peer.body_timeout());
        let request = request
            .map(|body| GrpcBody::new(body, limit, max_record_bytes, budget, timeout, method.unary_request));
        let call = self.inner.call(request);
        match deadline {
            // The client's deadline bounds the call until its response starts (as
            // tonic's own server does): a unary call, or a stream's opening.
            Some(deadline) => Box::pin(async move {
                match tokio::time::timeout(deadline, call).await {
                    Ok(response) => response,
                    Err(_) => Ok(status::deadline_exceeded(deadline).into_http()),
                }
            }),
            None => Box::pin(call),
        }
    }
}

/// The ACL object of the log a call's `proglog-log` header names (SPEC §11);
/// a bad name is refused before the body is read.
fn object(headers: &http::HeaderMap) -> Result<&str, Status> {
    let Some(value) = headers.get(LOG_METADATA) else { return Ok(OBJECT_WILDCARD) };
    let name =
        value.to_str().map_err(|_| Status::invalid_argument(format!("{LOG_METADATA} is not ASCII")))?;
    proglog_raft::check_log_name(name).map_err(status::from_log)?;
    Ok(object_of(name))
}

/// The `grpc-timeout` header: up to 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`); `None` if malformed (the call then runs without a deadline).
fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(amount * 3600),
        b"M" => Duration::from_secs(amount * 60),
        b"S" => Duration::from_secs(amount),
        b"m" => Duration::from_millis(amount),
        b"u" => Duration::from_micros(amount),
        b"n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A gRPC request body as tonic reads it, watched message by message:
/// - a message longer than the method's limit fails the call (`INVALID_ARGUMENT`
///   naming both sizes) as soon as its 5-byte header arrives, before its payload
///   is read, after the messages before it;
/// - a message that spans several frames (so tonic must buffer it) holds its
///   length in the request byte budgets until it is complete; no more of the body
///   is read until the budget allows, and if it does not within a second the
///   call is refused (`RESOURCE_EXHAUSTED`);
/// - a unary request body, and each message of a stream once begun, must arrive
///   within the body timeout (`DEADLINE_EXCEEDED`).
///
/// Messages that arrive whole within a frame cost a header parse each: no budget,
/// no timer (one is armed only while the body waits for bytes mid-message).
pub(crate) struct GrpcBody<B> {
    inner: B,
    /// Largest message accepted.
    limit: usize,
    /// The method carries records: a larger message is refused naming this.
    max_record_bytes: Option<u64>,
    budget: RequestBudget,
    /// The header of the message being read, while incomplete.
    header: [u8; FRAME_HEADER_BYTES],
    header_len: usize,
    /// The message being read: (its length, payload bytes still to come).
    message: Option<(usize, usize)>,
    /// Budget held for that message.
    held: Option<Held>,
    holding: Option<Pin<Box<dyn Future<Output = Option<Held>> + Send>>>,
    /// Returned after the bytes before its cause have been handed on.
    error: Option<Status>,
    timeout: Duration,
    unary: bool,
    /// By when what is being received must be complete: a unary body, or a
    /// message of a stream that has begun.
    deadline: Option<Instant>,
    /// Wakes the reader at `deadline` while it waits for bytes.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> GrpcBody<B> {
    fn new(
        inner: B,
        limit: usize,
        max_record_bytes: Option<u64>,
        budget: RequestBudget,
        timeout: Duration,
        unary: bool,
    ) -> Self {
        Self {
            inner,
            limit,
            max_record_bytes,
            budget,
            header: [0; FRAME_HEADER_BYTES],
            header_len: 0,
            message: None,
            held: None,
            holding: None,
            error: None,
            timeout,
            unary,
            deadline: unary.then(|| Instant::now() + timeout),
            timer: None,
        }
    }

    fn too_large(&self, bytes: usize) -> Status {
        match self.max_record_bytes {
            Some(max_record_bytes) => status::request_too_large(bytes, max_record_bytes),
            None => status::message_too_large(bytes, self.limit),
        }
    }

    /// Follows the message framing through `data`; returns how many of its bytes
    /// may be handed on (all, unless a message is too large).
    fn scan(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        while at < data.len() {
            if let Some((_, remaining)) = &mut self.message {
                let taken = (*remaining).min(data.len() - at);
                *remaining -= taken;
                at += taken;
                if *remaining == 0 {
                    self.message_done();
                }
                continue;
            }
            let taken = (FRAME_HEADER_BYTES - self.header_len).min(data.len() - at);
            self.header[self.header_len..self.header_len + taken].copy_from_slice(&data[at..at + taken]);
            self.header_len += taken;
            if self.header_len < FRAME_HEADER_BYTES {
                break;
            }
            self.header_len = 0;
            let len = (&self.header[1..]).get_u32() as usize;
            if len > self.limit {
                self.error = Some(self.too_large(len));
                // Hand on only the bytes before (this frame's part of) the header.
                return at;
            }
            at += taken;
            if len == 0 {
                self.message_done();
            } else {
                self.message = Some((len, len));
            }
        }
        data.len()
    }

    fn message_done(&mut self) {
        self.message = None;
        self.held = None;
        self.holding = None;
        if !self.unary {
            self.deadline = None;
        }
    }

    /// A message is partly read: tonic holds its bytes until the rest arrives.
    fn mid_message(&self) -> bool {
        self.message.is_some() || self.header_len > 0
    }

    /// Nothing to hand on yet: wait, but no later than the deadline. A message
    /// of a stream starts its clock here, the first time it has to wait for
    /// bytes (a body that keeps arriving needs no timer).
    fn wait<T>(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, tonic::codegen::StdError>>> {
        if self.deadline.is_none() && self.mid_message() {
            self.deadline = Some(Instant::now() + self.timeout);
        }
        let Some(deadline) = self.deadline else { return Poll::Pending };
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => self.timed_out(),
            Poll::Pending => Poll::Pending,
        }
    }

    fn timed_out<T>(&mut self) -> Poll<Option<Result<T, tonic::codegen::StdError>>> {
        self.deadline = None;
        Poll::Ready(Some(Err(status::body_timeout(self.timeout).into())))
    }
}

impl<B> Body for GrpcBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error.into())));
        }
        if this.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return this.timed_out();
        }
        // A message that spans frames: hold its length before reading more of it.
        if let Some((len, _)) = this.message
            && this.held.is_none()
        {
            if this.holding.is_none() {
                match this.budget.try_hold(len) {
                    Some(held) => this.held = Some(held),
                    None => this.holding = Some(Box::pin(this.budget.clone().hold(len))),
                }
            }
            if let Some(holding) = &mut this.holding {
                match holding.as_mut().poll(cx) {
                    Poll::Ready(Some(held)) => {
                        this.held = Some(held);
                        this.holding = None;
                    }
                    Poll::Ready(None) => {
                        this.holding = None;
                        return Poll::Ready(Some(Err(status::overloaded(
                            "server overloaded: request buffers are full".into(),
                        )
                        .into())));
                    }
                    Poll::Pending => return this.wait(cx),
                }
            }
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return this.wait(cx),
            Poll::Ready(None) => {
                this.deadline = None;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let pass = this.scan(&data);
                data.truncate(pass);
                Frame::data(data)
            }
            Err(frame) => frame,
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.error.is_none() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::test_budget;

    fn body(limit: usize) -> GrpcBody<http_body_util::Empty<Bytes>> {
        GrpcBody::new(http_body_util::Empty::new(), limit, None, test_budget(), Duration::from_secs(1), false)
    }

    fn message(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.resize(FRAME_HEADER_BYTES + len, 7);
        bytes
    }

    #[test]
    fn messages_are_followed_across_any_split_of_the_frames() {
        let stream: Vec<u8> = [message(3), message(0), message(10), message(1)].concat();
        for split in 0..=stream.len() {
            let mut body = body(10);
            let (a, b) = stream.split_at(split);
            assert_eq!(body.scan(a), a.len());
            assert_eq!(body.scan(b), b.len());
            assert!(!body.mid_message() && body.error.is_none(), "split at {split}");
        }
    }

    #[test]
    fn a_too_large_message_stops_the_body_right_before_its_header() {
        let stream: Vec<u8> = [message(3), message(11), message(1)].concat();
        for split in 0..=stream.len() {
            let mut body = body(10);
            let (a, b) = stream.split_at(split);
            let passed = body.scan(a) + if body.error.is_none() { body.scan(b) } else { 0 };
            assert_eq!(passed.min(8), 8, "the first message passes (split at {split})");
            assert!(passed <= 8 + FRAME_HEADER_BYTES, "no payload of the big one passes");
            let message = body.error.map(|status| status.message().to_owned()).unwrap_or_default();
            assert!(message.starts_with("request message of 11 bytes"), "{message}");
        }
    }

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(grpc_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [&b""[..], b"m", b"123456789S", b"10x", b"-1S", b"1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn methods_map_to_the_book_acl_actions() {
        let method = |path| method(path, &[]);
        assert_eq!(method("/log.v1.Log/Produce").action, Some(action::PRODUCE));
        assert_eq!(method("/log.v1.Log/ProduceStream").action, Some(action::PRODUCE));
        assert_eq!(method("/log.v1.Log/ConsumeStream").action, Some(action::CONSUME));
        assert_eq!(method("/log.v1.Log/GetOffsets").action, Some(action::CONSUME));
        assert_eq!(method("/log.v1.Log/CommitOffset").action, Some(action::CONSUME));
        assert_eq!(method("/log.v1.Log/InitProducer").action, Some(action::PRODUCE));
        assert_eq!(method("/log.v1.Log/FetchOffset").action, Some(action::CONSUME));
        assert_eq!(method("/log.v1.Log/GetServers").action, None);
        assert!(!method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").unary_request);
        assert_eq!(method("/log.v1.Log/ProduceStream").limit, MessageLimit::Records);
        assert_eq!(method("/log.v1.Log/Consume").limit, MessageLimit::Bytes(SMALL_MESSAGE_BYTES));
    }

    #[test]
    fn paths_under_an_extra_service_take_its_action_and_limit() {
        let extras = [ExtraRule {
            name: "proglog.internal.v1.Raft",
            action: action::REPLICATE,
            max_message_bytes: 8 << 20,
            streaming_requests: vec!["InstallSnapshot"],
        }];
        let step = method("/proglog.internal.v1.Raft/Step", &extras);
        assert_eq!(
            step,
            Method {
                action: Some(action::REPLICATE),
                limit: MessageLimit::Bytes(8 << 20),
                unary_request: true
            }
        );
        assert!(!method("/proglog.internal.v1.Raft/InstallSnapshot", &extras).unary_request);
        // A method the service does not have still needs its action.
        assert_eq!(method("/proglog.internal.v1.Raft/Nope", &extras).action, Some(action::REPLICATE));
        // Built-ins and unknown services are as without extras.
        assert_eq!(method("/log.v1.Log/Produce", &extras), method("/log.v1.Log/Produce", &[]));
        for path in ["/proglog.internal.v1.Raft", "/proglog.internal.v1.RaftX/Step", "/other.Svc/Step", ""] {
            assert_eq!(method(path, &extras).action, None, "{path}");
        }
    }
}
