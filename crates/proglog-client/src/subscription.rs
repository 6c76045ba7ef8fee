//! A consume stream that survives the loss of its server.

use proglog_api::v1::{ConsumeRequest, ConsumeResponse};
use tonic::{Code, Status};

use crate::{Call, Client, Error, FIRST_BACKOFF, next_backoff};

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
    /// The consumer group whose position it commits, if any.
    group: Option<Group>,
}

/// A subscription's consumer group and how it commits.
#[derive(Debug)]
struct Group {
    name: String,
    /// The position committed last (or the one it started from).
    committed: u64,
    /// Commit by itself once this long has passed since the last commit.
    every: Option<std::time::Duration>,
    last_commit: tokio::time::Instant,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("next", &self.next).field("server", &self.server).finish()
    }
}

impl Subscription {
    pub(crate) fn new(client: Client, offset: u64) -> Self {
        Self { client, next: offset, server: None, stream: None, group: None }
    }

    /// The same subscription, committing for consumer group `name` (from its
    /// position: nothing to commit yet).
    pub(crate) fn for_group(self, name: &str) -> Self {
        let last_commit = tokio::time::Instant::now();
        let group = Group { name: name.to_owned(), committed: self.next, every: None, last_commit };
        Self { group: Some(group), ..self }
    }

    /// Commits the group's position by itself, before waiting for the next
    /// record, once `every` has passed since the last commit: what
    /// [`Subscription::next`] returned before counts as processed (at least
    /// once: records after the last commit come again to the next subscriber
    /// of the group).
    pub fn commit_every(mut self, every: std::time::Duration) -> Self {
        if let Some(group) = self.group.as_mut() {
            group.every = Some(every);
        }
        self
    }

    /// Commits the group's position: every record [`Subscription::next`] has
    /// returned counts as processed. Nothing to do without a group (a
    /// subscription from [`Client::subscribe`]) or without new records.
    pub async fn commit(&mut self) -> Result<(), Error> {
        let Some(group) = self.group.as_mut() else { return Ok(()) };
        if group.committed != self.next {
            self.client.commit_offset(&group.name, self.next).await?;
            group.committed = self.next;
        }
        group.last_commit = tokio::time::Instant::now();
        Ok(())
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
        if self.group.as_ref().is_some_and(|g| g.every.is_some_and(|every| g.last_commit.elapsed() >= every))
        {
            self.commit().await?;
        }
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
                    Err(status) => self.client.call_error(self.server.as_deref().unwrap_or_default(), status),
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
        let (addr, mut client) = self.client.pick(Call::Consume).await?;
        let stream = client
            .consume_stream(ConsumeRequest { offset: self.next, linearizable: false })
            .await
            .map_err(|status| self.client.call_error(&addr, status))?
            .into_inner();
        self.stream = Some(stream);
        self.server = Some(addr);
        Ok(())
    }
}
