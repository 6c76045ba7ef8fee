//! Produces: what a failure says about a record's fate, and the pipelined
//! produce stream that carries on across leader changes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use proglog_api::v1::ProduceRequest;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::{
    Call, Client, Delivery, Error, FIRST_BACKOFF, io_kind, next_backoff, nothing_done, produce_request,
};

/// Records sent on a produce stream and not answered yet, at most (the
/// server's read-ahead window).
const WINDOW_RECORDS: usize = 1024;
/// Bytes of records sent and not answered yet, at most (one record if larger).
const WINDOW_BYTES: usize = 8 << 20;

/// What a failed produce says about its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It cannot be in the log: no leader was known, the server refused it as
    /// not the leader, or the connection was refused. Safe to send again.
    NotAppended,
    /// The server refused it for good (a denial, an invalid record): not
    /// appended, and sending it again would fail again.
    Refused,
    /// It may or may not be in the log.
    Unknown,
}

impl Outcome {
    pub(crate) fn of(error: &Error) -> Self {
        match error {
            Error::NoServer(_) => Self::NotAppended,
            Error::Status(status) if nothing_done(status) => Self::NotAppended,
            Error::Status(status) => match status.code() {
                Code::InvalidArgument
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::OutOfRange
                | Code::FailedPrecondition
                | Code::ResourceExhausted
                | Code::Unimplemented
                | Code::NotFound
                | Code::AlreadyExists => Self::Refused,
                _ => Self::Unknown,
            },
            Error::Connection { status, .. } => match io_kind(status) {
                Some(std::io::ErrorKind::ConnectionRefused) => Self::NotAppended,
                // tokio-rustls reports TLS failures (a handshake, an alert) so.
                Some(std::io::ErrorKind::InvalidData) => Self::Refused,
                _ => Self::Unknown,
            },
            // Nothing was sent; a TLS failure would only repeat itself.
            Error::Connect { cause, .. } => match io_kind(cause) {
                Some(std::io::ErrorKind::InvalidData) => Self::Refused,
                _ => Self::NotAppended,
            },
            Error::InvalidAddress { .. }
            | Error::Tls(_)
            | Error::InvalidLogName { .. }
            | Error::LogNotFound { .. }
            | Error::LogExists { .. } => Self::Refused,
            Error::OutcomeUnknown { .. } => Self::Unknown,
        }
    }
}

/// The connection was refused or no server was picked: nothing of what was
/// in flight was sent.
fn nothing_sent(error: &Error) -> bool {
    match error {
        Error::NoServer(_) | Error::Connect { .. } => true,
        Error::Connection { status, .. } => io_kind(status) == Some(std::io::ErrorKind::ConnectionRefused),
        _ => false,
    }
}

/// `error` from a produce sent to `addr`, as the caller sees it: a failure
/// after which the record may be in the log becomes [`Error::OutcomeUnknown`].
pub(crate) fn settle(addr: Option<&str>, error: Error) -> Error {
    match (addr, Outcome::of(&error), error) {
        (Some(addr), Outcome::Unknown, Error::Status(status) | Error::Connection { status, .. }) => {
            Error::OutcomeUnknown { addr: addr.to_owned(), status }
        }
        (_, _, error) => error,
    }
}

/// The results of [`Client::produce_stream`]: one per value, in order. Dropping
/// it stops sending (values in flight may still be appended).
pub struct ProduceStream {
    results: mpsc::Receiver<Result<u64, Error>>,
    driver: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ProduceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProduceStream").finish_non_exhaustive()
    }
}

impl Drop for ProduceStream {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl ProduceStream {
    pub(crate) fn start<S, V>(client: Client, values: S) -> Self
    where
        S: tokio_stream::Stream<Item = V> + Send + 'static,
        V: Into<Bytes> + 'static,
    {
        let (results, receiver) = mpsc::channel(WINDOW_RECORDS);
        let driver = Driver {
            client,
            input: Box::pin(values.map(Into::into)),
            input_done: false,
            producer: None,
            producer_asked: false,
            next_sequence: 0,
            to_send: VecDeque::new(),
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            answered: 0,
            results,
        };
        Self { results: receiver, driver: tokio::spawn(driver.run()) }
    }

    /// The result for the next value: its offset once committed, or why not;
    /// `None` once every value has its result (or an error ended the stream).
    pub async fn next(&mut self) -> Option<Result<u64, Error>> {
        self.results.recv().await
    }
}

impl tokio_stream::Stream for ProduceStream {
    type Item = Result<u64, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.results.poll_recv(cx)
    }
}

/// How one ProduceStream call ended.
enum End {
    /// Every value has its result.
    Finished,
    /// The caller dropped the results.
    CallerGone,
    /// The call failed (at `addr`, if a server was picked).
    Failed(Option<String>, Error),
}

/// Feeds values to the leader over ProduceStream calls, one after another when
/// the leader fails, and hands back one result per value.
struct Driver {
    client: Client,
    input: Pin<Box<dyn tokio_stream::Stream<Item = Bytes> + Send>>,
    input_done: bool,
    /// The stream's idempotent producer (exactly-once delivery, where the
    /// cluster has them), once asked for.
    producer: Option<u64>,
    producer_asked: bool,
    /// The sequence of the next value taken from `input`.
    next_sequence: u64,
    /// Values (with their sequences) to send before the next one from
    /// `input`: not sent yet, or to be sent again (oldest first).
    to_send: VecDeque<(Bytes, u64)>,
    /// Values sent on the current call and not answered (oldest first).
    in_flight: VecDeque<(Bytes, u64)>,
    in_flight_bytes: usize,
    /// Values the servers answered (for telling progress).
    answered: u64,
    results: mpsc::Sender<Result<u64, Error>>,
}

impl Driver {
    async fn run(mut self) {
        let (patience, delivery) = (self.client.leader_patience(), self.client.options().delivery);
        let mut failing_since: Option<Instant> = None;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let answered_before = self.answered;
            let (addr, error) = match self.call().await {
                End::Finished | End::CallerGone => return,
                End::Failed(addr, error) => (addr, error),
            };
            if self.answered != answered_before {
                failing_since = None;
                backoff = FIRST_BACKOFF;
            }
            // The first failure after progress is always tried again (once, for
            // a single server); then until `patience` runs out.
            let first_failure = failing_since.is_none();
            let since = *failing_since.get_or_insert_with(Instant::now);
            let give_up = !first_failure && since.elapsed() >= patience;
            if !self.settle_in_flight(addr.as_deref(), error, delivery, give_up).await {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            let _ = self.client.refresh().await;
        }
    }

    /// Decides the fate of the values in flight after `error`: sent again
    /// (first, in order), or answered with an error. `false` when the stream
    /// ends here (the error was sent as its last result, or the caller left).
    async fn settle_in_flight(
        &mut self,
        addr: Option<&str>,
        error: Error,
        delivery: Delivery,
        give_up: bool,
    ) -> bool {
        let in_flight = std::mem::take(&mut self.in_flight);
        self.in_flight_bytes = 0;
        let outcome = Outcome::of(&error);
        // Idempotent: sending again stores nothing twice.
        let resend = delivery == Delivery::AtLeastOnce || self.producer.is_some();
        let again = nothing_sent(&error)
            || match outcome {
                // Nothing in flight is lost: only a refusal of the call itself ends the stream.
                _ if in_flight.is_empty() => outcome != Outcome::Refused,
                Outcome::NotAppended => in_flight.len() <= 1 || resend,
                Outcome::Unknown => resend,
                Outcome::Refused => false,
            };
        if again && !give_up {
            for value in in_flight.into_iter().rev() {
                self.to_send.push_front(value);
            }
            return true;
        }
        if again || in_flight.is_empty() {
            // Out of patience, or the call itself was refused: the last result.
            let _ = self.results.send(Err(settle(addr, error))).await;
            return false;
        }
        let rest = in_flight.into_iter().skip(1);
        match outcome {
            // An invalid record: the server read no further, the rest goes again
            // (its sequence, never appended, goes to the next value).
            Outcome::Refused if error.status().is_some_and(|s| s.code() == Code::InvalidArgument) => {
                for value in rest.rev() {
                    self.to_send.push_front(value);
                }
                if self.producer.is_some() {
                    for (_, sequence) in &mut self.to_send {
                        *sequence -= 1;
                    }
                    self.next_sequence -= 1;
                }
                self.results.send(Err(error)).await.is_ok()
            }
            Outcome::Refused => {
                let _ = self.results.send(Err(error)).await;
                false
            }
            // The first is known not appended, the rest is not; or none is known.
            Outcome::NotAppended | Outcome::Unknown => {
                let status = match error.status() {
                    Some(status) => status.clone(),
                    None => Status::unavailable(error.to_string()),
                };
                let first = settle(addr, error);
                if self.results.send(Err(first)).await.is_err() {
                    return false;
                }
                let addr = addr.unwrap_or_default();
                for _ in rest {
                    let unknown = Error::OutcomeUnknown { addr: addr.to_owned(), status: status.clone() };
                    if self.results.send(Err(unknown)).await.is_err() {
                        return false;
                    }
                }
                true
            }
        }
    }

    /// The next value to send, with its sequence: one waiting to be sent
    /// again, else the next from the input.
    async fn next_value(
        to_send: &mut VecDeque<(Bytes, u64)>,
        input: &mut Pin<Box<dyn tokio_stream::Stream<Item = Bytes> + Send>>,
        next_sequence: &mut u64,
    ) -> Option<(Bytes, u64)> {
        match to_send.pop_front() {
            Some(value) => Some(value),
            None => {
                let value = input.next().await?;
                *next_sequence += 1;
                Some((value, *next_sequence - 1))
            }
        }
    }

    /// One ProduceStream call to the leader, for as long as it works.
    async fn call(&mut self) -> End {
        // Nothing is dialled before there is something to send.
        if self.to_send.is_empty() {
            match Self::next_value(&mut self.to_send, &mut self.input, &mut self.next_sequence).await {
                Some(value) => self.to_send.push_back(value),
                None => return End::Finished,
            }
        }
        if !self.producer_asked && self.client.options().delivery == Delivery::ExactlyOnce {
            match self.client.new_producer().await {
                Ok(producer) => (self.producer, self.producer_asked) = (producer, true),
                Err(error) => return End::Failed(None, error),
            }
        }
        let (addr, mut client) = match self.client.pick(Call::Produce).await {
            Ok(picked) => picked,
            Err(error) => return End::Failed(None, error),
        };
        let (requests, outgoing) = mpsc::channel::<ProduceRequest>(WINDOW_RECORDS);
        let mut requests = Some(requests);
        let outgoing = ReceiverStream::new(outgoing);
        let mut responses = match client.produce_stream(outgoing).await {
            Ok(response) => response.into_inner(),
            Err(status) => return End::Failed(Some(addr.clone()), self.client.call_error(&addr, status)),
        };
        // A leader that stops answering (cut off from its peers, it can commit
        // nothing) fails the call after the request timeout without progress.
        let patience = self.client.options().request_timeout;
        let stalled = tokio::time::sleep(patience);
        tokio::pin!(stalled);
        loop {
            let room = self.in_flight.len() < WINDOW_RECORDS && self.in_flight_bytes < WINDOW_BYTES;
            let more = !self.input_done || !self.to_send.is_empty();
            if !more {
                requests = None; // the end of the requests: the server finishes
            }
            tokio::select! {
                biased;
                message = responses.message() => match message {
                    Ok(Some(response)) => {
                        if let Some((value, _)) = self.in_flight.pop_front() {
                            self.in_flight_bytes -= value.len();
                        }
                        self.answered += 1;
                        stalled.as_mut().reset(Instant::now() + patience);
                        if self.results.send(Ok(response.offset)).await.is_err() {
                            return End::CallerGone;
                        }
                    }
                    Ok(None) if self.in_flight.is_empty() && !more => return End::Finished,
                    Ok(None) => {
                        let status = Status::unknown("the server ended the stream before answering every record");
                        return End::Failed(Some(addr), Error::Status(status));
                    }
                    Err(status) => return End::Failed(Some(addr.clone()), self.client.call_error(&addr, status)),
                },
                value = Self::next_value(&mut self.to_send, &mut self.input, &mut self.next_sequence), if room && more => match value {
                    Some((value, sequence)) => {
                        if self.in_flight.is_empty() {
                            stalled.as_mut().reset(Instant::now() + patience);
                        }
                        self.in_flight_bytes += value.len();
                        self.in_flight.push_back((value.clone(), sequence));
                        // Room in the window is room in the channel; a closed
                        // channel (the call failed) shows in the responses.
                        if let Some(requests) = &requests {
                            let producer = self.producer.map(|id| (id, sequence));
                            let _ = requests.try_send(produce_request(value, producer));
                        }
                    }
                    None => self.input_done = true,
                },
                () = &mut stalled, if !self.in_flight.is_empty() => {
                    let status = Status::deadline_exceeded("no answer within the request timeout");
                    return End::Failed(Some(addr.clone()), Error::Connection { addr, status });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;

    #[test]
    fn a_failure_tells_whether_the_record_can_be_in_the_log() {
        let not_leader = Status::with_error_details(
            Code::Unavailable,
            "not the leader",
            ErrorDetails::with_error_info("NOT_LEADER", "proglog", HashMap::new()),
        );
        let status = |code| Error::Status(Status::new(code, "x"));
        assert_eq!(Outcome::of(&Error::NoServer("no leader".into())), Outcome::NotAppended);
        assert_eq!(Outcome::of(&Error::Status(not_leader)), Outcome::NotAppended);
        let overloaded = Status::with_error_details(
            Code::Unavailable,
            "the leader has too much uncommitted data; retry",
            ErrorDetails::with_error_info("OVERLOADED", "proglog", HashMap::new()),
        );
        assert_eq!(Outcome::of(&Error::Status(overloaded)), Outcome::NotAppended);
        let foreign = Status::with_error_details(
            Code::Unavailable,
            "someone else's reason",
            ErrorDetails::with_error_info("OVERLOADED", "elsewhere", HashMap::new()),
        );
        assert_eq!(Outcome::of(&Error::Status(foreign)), Outcome::Unknown);
        assert_eq!(Outcome::of(&status(Code::PermissionDenied)), Outcome::Refused);
        assert_eq!(Outcome::of(&status(Code::InvalidArgument)), Outcome::Refused);
        // A leader that failed while committing, a timeout: maybe appended.
        assert_eq!(Outcome::of(&status(Code::Unavailable)), Outcome::Unknown);
        assert_eq!(Outcome::of(&status(Code::DeadlineExceeded)), Outcome::Unknown);
        assert_eq!(Outcome::of(&status(Code::Internal)), Outcome::Unknown);

        let unknown = settle(Some("a:1"), status(Code::Unavailable));
        assert!(matches!(&unknown, Error::OutcomeUnknown { addr, .. } if addr == "a:1"), "{unknown}");
        assert!(unknown.to_string().contains("may or may not be in the log"), "{unknown}");
        assert!(matches!(settle(Some("a:1"), status(Code::PermissionDenied)), Error::Status(_)));
    }
}
