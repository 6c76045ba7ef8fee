//! Named logs (SPEC §11): a client per log, each with its own view of the
//! log's Raft group, and the calls that create, delete and list logs.

use std::future::Future;

use proglog_api::v1::{CreateLogRequest, DeleteLogRequest, ListLogsRequest};
use tonic::{Code, Status};

pub use proglog_api::v1::LogInfo;

use crate::produce::Outcome;
use crate::{Call, Client, Error, FIRST_BACKOFF, Rpc, next_backoff, subscription};

/// The gRPC metadata key that names the log a call acts on (SPEC §11); a call
/// without it acts on the default log.
pub const LOG_METADATA_KEY: &str = "proglog-log";

/// The longest log name, in bytes.
pub const MAX_LOG_NAME_BYTES: usize = 128;

/// Checks that `name` is a log name the servers accept:
/// `[a-z0-9][a-z0-9._-]{0,127}`. The default log's name, the empty one, is
/// not: it cannot be created or deleted.
pub fn validate_log_name(name: &str) -> Result<(), Error> {
    let invalid = |reason: String| Err(Error::InvalidLogName { name: name.to_owned(), reason });
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let Some(first) = name.chars().next() else {
        return invalid("the name is empty (the default log's)".into());
    };
    if name.len() > MAX_LOG_NAME_BYTES {
        return invalid(format!("{} bytes long, at most {MAX_LOG_NAME_BYTES} are allowed", name.len()));
    }
    if !allowed(first) {
        return invalid("it must start with a lower-case letter or a digit".into());
    }
    if let Some(bad) = name.chars().find(|&c| !allowed(c) && !matches!(c, '.' | '_' | '-')) {
        return invalid(format!(
            "'{}' is not allowed (use a-z, 0-9, '.', '_' and '-')",
            bad.escape_default()
        ));
    }
    Ok(())
}

/// How [`Client::create_log`] makes a log. A 0 (the default) takes the
/// servers' default for new logs (the agent's `--retention-bytes` and
/// `--retention-ms`, which keep everything unless set), as a log created by a
/// first produce does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Retention by size: the leader removes the log's oldest segments while
    /// the rest still hold at least this many bytes (0: the servers' default).
    pub retention_bytes: u64,
    /// Retention by age, in milliseconds: the leader removes the segments
    /// whose newest record is older (0: the servers' default).
    pub retention_ms: u64,
}

impl Client {
    /// A client of the log `name` (empty: the default log), sharing this
    /// client's connections and options. Its calls carry the name (metadata
    /// `proglog-log`), and it follows that log's servers and leader — a named
    /// log is a Raft group of its own, whose leader may be another server
    /// than the default log's. It learns them on its first call; clients of
    /// the same log share one view. Only the name is checked here: a log the
    /// cluster does not hold gives [`Error::LogNotFound`] when used, except a
    /// produce to a cluster that creates logs on a first produce (the
    /// default).
    pub fn log(&self, name: &str) -> Result<Client, Error> {
        if name == self.inner.log {
            return Ok(self.clone());
        }
        Client::view(&self.inner.shared, name)
    }

    /// The name of the log this client acts on (empty: the default log).
    pub fn log_name(&self) -> &str {
        &self.inner.log
    }

    /// Creates the log `name` with `options` (any server takes it). A log of
    /// that name that exists is left as it is: [`Error::LogExists`].
    pub async fn create_log(&self, name: &str, options: LogOptions) -> Result<(), Error> {
        validate_log_name(name)?;
        let request = CreateLogRequest {
            name: name.to_owned(),
            retention_bytes: options.retention_bytes,
            retention_ms: options.retention_ms,
        };
        let created = self.admin(false, |mut rpc| {
            let request = request.clone();
            async move { rpc.create_log(request).await }
        });
        match created.await {
            Ok(_) => Ok(()),
            Err(Error::Status(status)) if status.code() == Code::AlreadyExists => {
                Err(Error::LogExists { name: name.to_owned(), status })
            }
            Err(error) => Err(error),
        }
    }

    /// Deletes the log `name` and its records, on every server (any server
    /// takes it); [`Error::LogNotFound`] if there is none. The default log
    /// cannot be deleted.
    pub async fn delete_log(&self, name: &str) -> Result<(), Error> {
        validate_log_name(name)?;
        let request = DeleteLogRequest { name: name.to_owned() };
        let deleted = self.admin(false, |mut rpc| {
            let request = request.clone();
            async move { rpc.delete_log(request).await }
        });
        match deleted.await {
            Ok(_) => Ok(()),
            Err(Error::Status(status)) if status.code() == Code::NotFound => {
                Err(Error::LogNotFound { name: name.to_owned(), status })
            }
            Err(error) => Err(error),
        }
    }

    /// The logs of the cluster (the default log, named `""`, first; then the
    /// others by name), as the default log's leader (or, without one, any
    /// server) holds them: offsets and bytes are that server's.
    pub async fn list_logs(&self) -> Result<Vec<LogInfo>, Error> {
        let listed = self.admin(true, |mut rpc| async move { rpc.list_logs(ListLogsRequest {}).await });
        Ok(listed.await?.logs)
    }

    /// Sends a call that names its log in its body (no `proglog-log`
    /// metadata) to the default log's leader, where the catalog of logs is
    /// kept (any server would forward it there), or any server. It is sent
    /// again while no server is reachable or the servers say nothing was done
    /// (an election), and for a `read_only` call after any failure a server
    /// may not have (unavailable), up to `failover_timeout`.
    async fn admin<T, F, C>(&self, read_only: bool, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Rpc) -> C,
        C: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let default = self.log("")?;
        let deadline = tokio::time::Instant::now() + default.leader_patience();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let error = match default.pick(Call::Other).await {
                Ok((addr, rpc)) => match default.unary_any(&addr, call(rpc)).await {
                    Ok(response) => return Ok(response),
                    Err(error) => error,
                },
                Err(error) => error,
            };
            let retry =
                Outcome::of(&error) == Outcome::NotAppended || (read_only && subscription::resumable(&error));
            if !retry || tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            let _ = default.refresh().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(name: &str) -> String {
        match validate_log_name(name) {
            Err(Error::InvalidLogName { reason, .. }) => reason,
            other => panic!("{name:?}: expected an invalid name, got {other:?}"),
        }
    }

    #[test]
    fn names_of_the_spec_pass_and_others_say_why_not() {
        let longest = "a".repeat(MAX_LOG_NAME_BYTES);
        for name in ["a", "0", "orders", "orders.v2", "eu-west_1", "9a.b-c_d", longest.as_str()] {
            assert!(validate_log_name(name).is_ok(), "{name}");
        }
        assert!(reason("").contains("empty"));
        assert!(reason(&"a".repeat(MAX_LOG_NAME_BYTES + 1)).contains("at most 128"));
        for name in ["Orders", ".hidden", "-x", "_x"] {
            assert!(reason(name).contains("must start with"), "{name}");
        }
        for (name, bad) in [("a/b", "'/'"), ("a b", "' '"), ("aB", "'B'"), ("a\n", "'\\n'"), ("é", "start")]
        {
            assert!(reason(name).contains(bad), "{name}: {}", reason(name));
        }
    }

    #[test]
    fn an_invalid_name_is_refused_before_anything_is_sent() {
        let error = validate_log_name("No").unwrap_err();
        assert_eq!(Outcome::of(&error), Outcome::Refused);
        assert!(error.to_string().starts_with("invalid log name 'No': "), "{error}");
    }
}
