//! The subcommands: produce, consume, servers, logs, each a few calls of
//! `proglog_client`.

use std::ffi::OsString;
use std::future::Future;
use std::io::BufRead as _;

use proglog_client::{Client, Offsets, ProduceStream, Subscription};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::output::Printer;

/// Lines read from stdin ahead of the produce stream.
const STDIN_QUEUE: usize = 1024;
/// How often `consume --group` commits what it printed.
const GROUP_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// `proglog produce`: the values given, or one record per stdin line, pipelined
/// over a produce stream (a single value goes with Produce). Offsets are
/// printed as they come back, so this also works interactively.
pub(crate) async fn produce(client: &Client, values: Vec<OsString>, out: &mut Printer) -> anyhow::Result<()> {
    let mut values: Vec<Vec<u8>> = values.into_iter().map(OsString::into_encoded_bytes).collect();
    match values.len() {
        0 => produce_stdin(client, out).await,
        1 => {
            let offset = client.produce(values.pop().unwrap_or_default()).await?;
            out.offset(offset)
        }
        _ => print_offsets(client.produce_stream(tokio_stream::iter(values)), out).await,
    }
}

/// Prints the offset of each value of `stream`; stops at the first error.
async fn print_offsets(mut stream: ProduceStream, out: &mut Printer) -> anyhow::Result<()> {
    loop {
        match flushing(out, stream.next()).await? {
            Some(offset) => out.offset(offset?)?,
            None => return Ok(()),
        }
    }
}

/// Awaits `future`; if it is not ready at once, flushes `out` first, so a
/// reader sees each line as it comes without a write per line during a burst.
async fn flushing<T>(out: &mut Printer, future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::pin!(future);
    tokio::select! {
        biased;
        value = &mut future => Ok(value),
        () = std::future::ready(()) => {
            out.flush()?;
            Ok(future.await)
        }
    }
}

/// One record per stdin line, without its line ending (`\n` or `\r\n`).
async fn produce_stdin(client: &Client, out: &mut Printer) -> anyhow::Result<()> {
    let (lines_tx, lines) = mpsc::channel(STDIN_QUEUE);
    let (error_tx, mut error) = oneshot::channel();
    // A plain thread, not the runtime's blocking pool: a read blocked on stdin must
    // not keep the process alive after an error.
    std::thread::spawn(move || read_lines(lines_tx, error_tx));
    print_offsets(client.produce_stream(ReceiverStream::new(lines)), out).await?;
    match error.try_recv() {
        Ok(error) => Err(anyhow::anyhow!("cannot read stdin: {error}")),
        Err(_) => Ok(()),
    }
}

/// Reads stdin line by line into `lines`; a read error goes to `error` before `lines`
/// closes.
fn read_lines(lines: mpsc::Sender<Vec<u8>>, error: oneshot::Sender<std::io::Error>) {
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut line = Vec::new();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if lines.blocking_send(line).is_err() {
                    return; // the producer gave up
                }
            }
            Err(read_error) if read_error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(read_error) => {
                let _ = error.send(read_error);
                return;
            }
        }
    }
}

/// What `proglog consume` reads.
#[derive(Debug)]
pub(crate) struct Consume {
    /// The first offset [default: the lowest the log holds].
    pub(crate) offset: Option<u64>,
    /// Wait for new records at the end instead of stopping there.
    pub(crate) follow: bool,
    /// At most this many records.
    pub(crate) count: Option<u64>,
    /// The consumer group to read (and commit) for.
    pub(crate) group: Option<String>,
    /// Read each record linearizably (not with `follow`).
    pub(crate) linearizable: bool,
}

/// `proglog consume`: from `offset` (default: the lowest offset the log still
/// holds, or the group's position) to the end of the log as it is now, or on
/// forever with `follow`; at most `count` records.
pub(crate) async fn consume(client: &Client, read: &Consume, out: &mut Printer) -> anyhow::Result<()> {
    let Consume { offset, follow, count, ref group, linearizable } = *read;
    let group = group.as_deref();
    if count == Some(0) {
        return Ok(());
    }
    if linearizable {
        return consume_linearizable(client, offset, count, group, out).await;
    }
    let mut subscription = match group {
        Some(group) => Some(client.subscribe_group(group).await?),
        None => None,
    };
    let offset = subscription.as_ref().map(Subscription::offset).or(offset);
    let range = if follow && offset.is_some() { None } else { Some(client.offsets().await?) };
    let start = offset.or(range.map(|range| range.lowest)).unwrap_or_default();
    let mut left = count.unwrap_or(u64::MAX);
    if let (Some(range), false) = (range, follow) {
        left = left.min(readable(start, range)?);
    }
    let mut subscription = subscription.take().unwrap_or_else(|| client.subscribe(start));
    let mut committed = tokio::time::Instant::now();
    while left > 0 && !out.closed() {
        let record = flushing(out, subscription.next()).await??;
        out.record(&record)?;
        left -= 1;
        if group.is_some() && committed.elapsed() >= GROUP_COMMIT_INTERVAL {
            // Only what is out is processed.
            out.flush()?;
            subscription.commit().await?;
            committed = tokio::time::Instant::now();
        }
    }
    // What was printed is processed: the group's next consumer starts after it.
    out.flush()?;
    subscription.commit().await?;
    Ok(())
}

/// How many records there are from `start` to the end of `range` (the log's
/// end when the command started); beyond it, or below the lowest offset, there
/// is nothing to read.
fn readable(start: u64, range: Offsets) -> anyhow::Result<u64> {
    if start > range.next || start < range.lowest {
        anyhow::bail!("offset out of range: {start}");
    }
    Ok(range.next - start)
}

/// `proglog consume --linearizable`: each record with its own linearizable
/// Consume, from `offset` (or the group's position, or the lowest offset) to
/// the log's end when the command started; the group's position is committed
/// as `consume --group` does.
async fn consume_linearizable(
    client: &Client,
    offset: Option<u64>,
    count: Option<u64>,
    group: Option<&str>,
    out: &mut Printer,
) -> anyhow::Result<()> {
    let position = match group {
        Some(group) => client.fetch_offset(group).await?,
        None => None,
    };
    let range = client.offsets().await?;
    let start = position.or(offset).unwrap_or(range.lowest);
    let end = start + readable(start, range)?.min(count.unwrap_or(u64::MAX));
    let (mut next, mut committed, mut committed_at) = (start, start, tokio::time::Instant::now());
    while next < end && !out.closed() {
        let record = flushing(out, client.consume_linearizable(next)).await??;
        out.record(&record)?;
        next += 1;
        if let Some(group) = group
            && committed_at.elapsed() >= GROUP_COMMIT_INTERVAL
        {
            out.flush()?;
            client.commit_offset(group, next).await?;
            (committed, committed_at) = (next, tokio::time::Instant::now());
        }
    }
    out.flush()?;
    if let Some(group) = group
        && committed != next
    {
        client.commit_offset(group, next).await?;
    }
    Ok(())
}

/// `proglog servers`.
pub(crate) async fn servers(client: &Client, out: &mut Printer) -> anyhow::Result<()> {
    for server in &client.servers().await? {
        out.server(server)?;
    }
    Ok(())
}

/// `proglog logs list`.
pub(crate) async fn list_logs(client: &Client, out: &mut Printer) -> anyhow::Result<()> {
    for log in &client.list_logs().await? {
        out.log(log)?;
    }
    Ok(())
}
