//! The subcommands: produce, consume, servers.

use std::ffi::OsString;
use std::io::BufRead as _;
use std::time::Duration;

use proglog_api::v1::log_client::LogClient;
use proglog_api::v1::{ConsumeRequest, ConsumeResponse, GetServersRequest, ProduceRequest, Record};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::connect::error_chain;
use crate::output::Printer;

type Client = LogClient<Channel>;

/// Lines read from stdin ahead of the produce stream.
const STDIN_QUEUE: usize = 1024;

/// A call that failed below gRPC: the connection broke or the server (TLS) refused it.
#[derive(Debug)]
pub(crate) struct ConnectionFailed(pub(crate) String);

impl std::fmt::Display for ConnectionFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectionFailed {}

/// A failed call as one line: the status message (e.g. `nobody not permitted to
/// produce to *`), or, for a transport failure, [`ConnectionFailed`] with its causes.
fn rpc_error(status: Status) -> anyhow::Error {
    let mut message = status.message().to_owned();
    if message.is_empty() {
        message = status.code().description().to_owned();
    }
    match std::error::Error::source(&status) {
        Some(source) => {
            let cause = error_chain(source);
            let message = if cause.contains(&message) { cause } else { format!("{message}: {cause}") };
            ConnectionFailed(message).into()
        }
        None => anyhow::anyhow!(message),
    }
}

fn request(value: Vec<u8>) -> ProduceRequest {
    ProduceRequest { record: Some(Record { value: value.into(), ..Default::default() }) }
}

/// `proglog produce`: the values given, or one record per stdin line.
pub(crate) async fn produce(
    client: &mut Client,
    values: Vec<OsString>,
    out: &mut Printer,
) -> anyhow::Result<()> {
    if values.is_empty() {
        return produce_stdin(client, out).await;
    }
    let mut values: Vec<Vec<u8>> = values.into_iter().map(OsString::into_encoded_bytes).collect();
    if values.len() == 1 {
        let value = values.pop().unwrap_or_default();
        return produce_one(client, value, out).await;
    }
    let sent = values.len();
    let answered = produce_stream(client, tokio_stream::iter(values), out, false).await?;
    if answered < sent {
        anyhow::bail!("the server ended the stream after {answered} of {sent} records");
    }
    Ok(())
}

async fn produce_one(client: &mut Client, value: Vec<u8>, out: &mut Printer) -> anyhow::Result<()> {
    let response = client.produce(request(value)).await.map_err(rpc_error)?;
    out.offset(response.into_inner().offset)
}

/// Sends `values` over ProduceStream (pipelined; the server answers in order) and
/// prints each offset; returns how many were answered.
async fn produce_stream(
    client: &mut Client,
    values: impl tokio_stream::Stream<Item = Vec<u8>> + Send + 'static,
    out: &mut Printer,
    flush_each: bool,
) -> anyhow::Result<usize> {
    let mut responses = client.produce_stream(values.map(request)).await.map_err(rpc_error)?.into_inner();
    let mut answered = 0;
    while let Some(response) = next_message(&mut responses, out, flush_each).await? {
        out.offset(response.offset)?;
        answered += 1;
    }
    Ok(answered)
}

/// One record per stdin line, without its line ending (`\n` or `\r\n`). The first
/// goes with Produce, as soon as it is read; the rest, if any, follow it over
/// ProduceStream once it is stored (so offsets keep the order of the lines). Offsets
/// are printed as they come back, so this also works interactively.
async fn produce_stdin(client: &mut Client, out: &mut Printer) -> anyhow::Result<()> {
    let (lines_tx, mut lines) = mpsc::channel(STDIN_QUEUE);
    let (error_tx, mut error) = oneshot::channel();
    // A plain thread, not the runtime's blocking pool: a read blocked on stdin must
    // not keep the process alive after an error.
    std::thread::spawn(move || read_lines(lines_tx, error_tx));
    let stdin_error = |error: &mut oneshot::Receiver<std::io::Error>| match error.try_recv() {
        Ok(error) => Err(anyhow::anyhow!("cannot read stdin: {error}")),
        Err(_) => Ok(()),
    };
    let Some(first) = lines.recv().await else {
        return stdin_error(&mut error);
    };
    produce_one(client, first, out).await?;
    out.flush()?;
    if let Some(second) = lines.recv().await {
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&sent);
        let rest = tokio_stream::once(second).chain(ReceiverStream::new(lines)).map(move |line| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            line
        });
        let answered = produce_stream(client, rest, out, true).await?;
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        if answered < sent {
            anyhow::bail!("the server ended the stream after {answered} of {sent} records");
        }
    }
    stdin_error(&mut error)
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

/// The next message of a response stream. With `flush_each`, what is printed is
/// flushed whenever the stream has nothing ready, so a reader sees each line as it
/// arrives without a write per line during a burst.
async fn next_message<T>(
    stream: &mut Streaming<T>,
    out: &mut Printer,
    flush_each: bool,
) -> anyhow::Result<Option<T>> {
    if flush_each {
        // Polls the stream once (Timeout polls its future before the deadline).
        if let Ok(ready) = tokio::time::timeout(Duration::ZERO, stream.message()).await {
            return ready.map_err(rpc_error);
        }
        out.flush()?;
    }
    stream.message().await.map_err(rpc_error)
}

/// `proglog consume`.
pub(crate) async fn consume(
    client: &mut Client,
    offset: u64,
    follow: bool,
    count: Option<u64>,
    out: &mut Printer,
) -> anyhow::Result<()> {
    if count == Some(0) {
        return Ok(());
    }
    if follow {
        consume_follow(client, offset, count, out).await
    } else {
        consume_to_end(client, offset, count, out).await
    }
}

/// ConsumeStream from `offset`, forever or for `count` records.
async fn consume_follow(
    client: &mut Client,
    offset: u64,
    count: Option<u64>,
    out: &mut Printer,
) -> anyhow::Result<()> {
    let mut stream = client.consume_stream(ConsumeRequest { offset }).await.map_err(rpc_error)?.into_inner();
    let mut received = 0;
    while let Some(response) = next_message(&mut stream, out, true).await? {
        out.record(&record_of(response)?)?;
        received += 1;
        if count == Some(received) || out.closed() {
            break;
        }
    }
    Ok(())
}

fn record_of(response: ConsumeResponse) -> anyhow::Result<Record> {
    response.record.ok_or_else(|| anyhow::anyhow!("the server sent a response without a record"))
}

/// Reads from `offset` to the end of the log as it is now, or `count` records.
///
/// Records come over ConsumeStream (which would wait at the end). Whenever the stream
/// has nothing ready, a unary Consume of the next offset asks whether that record
/// exists: `OUT_OF_RANGE` means the end is reached; otherwise the record is on its way
/// and the stream is read on. A probe costs one round trip, during which the stream
/// keeps filling its window, so a long read makes few of them.
async fn consume_to_end(
    client: &mut Client,
    offset: u64,
    count: Option<u64>,
    out: &mut Printer,
) -> anyhow::Result<()> {
    // Refused at once (OUT_OF_RANGE) below the lowest offset.
    let mut stream = client.consume_stream(ConsumeRequest { offset }).await.map_err(rpc_error)?.into_inner();
    let mut received: u64 = 0;
    loop {
        let message = match tokio::time::timeout(Duration::ZERO, stream.message()).await {
            Ok(ready) => ready.map_err(rpc_error)?,
            Err(_pending) => {
                out.flush()?;
                let Some(next) = offset.checked_add(received) else {
                    return Ok(()); // nothing can come after offset u64::MAX
                };
                match client.consume(ConsumeRequest { offset: next }).await {
                    Ok(_) => {} // it exists: the stream will bring it
                    Err(status) if status.code() == Code::OutOfRange => {
                        return if received == 0 {
                            check_start(client, offset, status).await
                        } else {
                            Ok(())
                        };
                    }
                    Err(status) => return Err(rpc_error(status)),
                }
                stream.message().await.map_err(rpc_error)?
            }
        };
        let Some(response) = message else {
            anyhow::bail!("the server ended the stream before the end of the log");
        };
        out.record(&record_of(response)?)?;
        received += 1;
        if count == Some(received) || out.closed() {
            return Ok(());
        }
    }
}

/// Nothing exists at `offset`, which is not below the lowest offset (ConsumeStream
/// accepted it): fine if `offset` is the end of the log (nothing to print), an error
/// if it is beyond the end.
async fn check_start(client: &mut Client, offset: u64, out_of_range: Status) -> anyhow::Result<()> {
    let Some(previous) = offset.checked_sub(1) else {
        return Ok(()); // an empty log
    };
    match client.consume(ConsumeRequest { offset: previous }).await {
        Ok(_) => Ok(()), // `offset` is the end
        Err(status) if status.code() == Code::OutOfRange => {
            // Either `offset` is the lowest offset (of an empty log), or beyond the end.
            if below_lowest(client, previous).await? { Ok(()) } else { Err(rpc_error(out_of_range)) }
        }
        Err(status) => Err(rpc_error(status)),
    }
}

/// Whether ConsumeStream refuses `offset` as below the lowest offset (it answers at
/// once then; otherwise it would wait for the record, and the call is dropped).
async fn below_lowest(client: &mut Client, offset: u64) -> anyhow::Result<bool> {
    match client.consume_stream(ConsumeRequest { offset }).await {
        Ok(_stream) => Ok(false),
        Err(status) if status.code() == Code::OutOfRange => Ok(true),
        Err(status) => Err(rpc_error(status)),
    }
}

/// `proglog servers`.
pub(crate) async fn servers(client: &mut Client, out: &mut Printer) -> anyhow::Result<()> {
    let response = client.get_servers(GetServersRequest {}).await.map_err(rpc_error)?;
    for server in &response.into_inner().servers {
        out.server(server)?;
    }
    Ok(())
}
