//! A consume stream that survives the loss of its server.

use proglog_api::v1::{ConsumeRequest, ConsumeResponse};
use tonic::{Code, Status};

use crate::{Call, Client, Error, FIRST_BACKOFF, call_error, log_client, next_backoff};

/// Whether a consume that failed with `error` may succeed on another server
/// (or later): the server was unavailable or the connection failed.
pub(crate) fn resumable(error: &Error) -> bool {
    match error {
        Error::NoServer(_) | Error::Connect { .. } | Error::Connection { .. } => true,
        Error::Status(status) => {
            matches!(status.code(), Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal)
        }
        _ => false,
    }
}

/// Follows the log from an offset ([`Client::subscribe`]): a ConsumeStream on
/// a follower, resumed on another server from the next offset it has not
/// delivered when its server goes away.
pub struct Subscription {
    client: Client,
    /// The offset of the next record to deliver.
    next: u64,
    /// The server the current stream comes from.
    server: Option<String>,
    stream: Option<tonic::Streaming<ConsumeResponse>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("next", &self.next).field("server", &self.server).finish()
    }
}

impl Subscription {
    pub(crate) fn new(client: Client, offset: u64) -> Self {
        Self { client, next: offset, server: None, stream: None }
    }

    /// The RPC address of the server the records come from now, if connected.
    pub fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }

    /// The offset of the next record [`Subscription::next`] returns.
    pub fn offset(&self) -> u64 {
        self.next
    }

    /// The next record (waiting for it if it is not written yet). Moves to
    /// another server when this one fails, for up to the client's
    /// `failover_timeout` without a record; an error it cannot get past (the
    /// offset was removed by retention, a denial) is returned.
    pub async fn next(&mut self) -> Result<proglog_api::v1::Record, Error> {
        let timeout = self.client.options().failover_timeout;
        // Counted from the first failure: waiting at the tail is not failing.
        let mut deadline = None;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let failure = match self.stream.as_mut() {
                None => match self.open().await {
                    Ok(()) => continue,
                    Err(error) => error,
                },
                Some(stream) => match stream.message().await {
                    Ok(Some(response)) => {
                        let Some(record) = response.record else { continue };
                        if record.offset < self.next {
                            continue; // already delivered (a resumed stream overlaps)
                        }
                        if record.offset > self.next {
                            return Err(Error::Status(Status::data_loss(format!(
                                "expected offset {}, the server sent {}",
                                self.next, record.offset
                            ))));
                        }
                        self.next += 1;
                        return Ok(record);
                    }
                    Ok(None) => Error::Status(Status::unavailable("the server ended the stream")),
                    Err(status) => call_error(self.server.as_deref().unwrap_or_default(), status),
                },
            };
            self.stream = None;
            self.server = None;
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
            if !resumable(&failure) || tokio::time::Instant::now() >= deadline {
                return Err(failure);
            }
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            let _ = self.client.refresh().await;
        }
    }

    async fn open(&mut self) -> Result<(), Error> {
        let addr = self.client.address_for(Call::Consume)?;
        let mut client = log_client(self.client.channel(&addr).await?);
        let stream = client
            .consume_stream(ConsumeRequest { offset: self.next, linearizable: false })
            .await
            .map_err(|status| call_error(&addr, status))?
            .into_inner();
        self.stream = Some(stream);
        self.server = Some(addr);
        Ok(())
    }
}
