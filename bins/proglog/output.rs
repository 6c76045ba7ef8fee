//! What the CLI prints on stdout, as text or JSON lines.

use std::io::{BufWriter, ErrorKind, Stdout, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use proglog_api::v1::{LogInfo, Record, Server};
use serde::Serialize;

use crate::Output;

#[derive(Serialize)]
struct JsonOffset {
    offset: u64,
}

#[derive(Serialize)]
struct JsonRecord {
    offset: u64,
    value: String,
}

#[derive(Serialize)]
struct JsonServer<'a> {
    id: &'a str,
    rpc_addr: &'a str,
    is_leader: bool,
}

#[derive(Serialize)]
struct JsonLog<'a> {
    name: &'a str,
    lowest: u64,
    next: u64,
    bytes: u64,
    retention_bytes: u64,
    retention_ms: u64,
}

impl<'a> JsonLog<'a> {
    fn of(log: &'a LogInfo) -> Self {
        let LogInfo { ref name, lowest, next, retention_bytes, retention_ms, bytes } = *log;
        Self { name, lowest, next, bytes, retention_bytes, retention_ms }
    }
}

/// How `logs list` names the default log in text (a name cannot hold
/// parentheses, so no log is named so).
const DEFAULT_LOG_TEXT: &str = "(default)";

/// A log as `logs list` prints it in text.
fn log_text(log: &LogInfo) -> String {
    let LogInfo { ref name, lowest, next, retention_bytes, retention_ms, bytes } = *log;
    let name = if name.is_empty() { DEFAULT_LOG_TEXT } else { name };
    format!("{name} {lowest} {next} {bytes} {retention_bytes} {retention_ms}")
}

/// Buffered stdout in the chosen format. A closed stdout (the reader went away, as in
/// `proglog consume | head`) is not an error: printing stops and [`Printer::closed`]
/// tells long-running commands to stop too.
#[derive(Debug)]
pub(crate) struct Printer {
    out: BufWriter<Stdout>,
    format: Output,
    closed: bool,
}

impl Printer {
    pub(crate) fn new(format: Output) -> Self {
        Self { out: BufWriter::new(std::io::stdout()), format, closed: false }
    }

    /// Whether stdout's reader has gone away.
    pub(crate) fn closed(&self) -> bool {
        self.closed
    }

    /// The offset a produced record got.
    pub(crate) fn offset(&mut self, offset: u64) -> anyhow::Result<()> {
        match self.format {
            Output::Text => self.line(offset.to_string().as_bytes()),
            Output::Json => self.json(&JsonOffset { offset }),
        }
    }

    /// A consumed record: its value (lossy UTF-8) or its offset and base64 value.
    pub(crate) fn record(&mut self, record: &Record) -> anyhow::Result<()> {
        match self.format {
            Output::Text => self.line(String::from_utf8_lossy(&record.value).as_bytes()),
            Output::Json => {
                self.json(&JsonRecord { offset: record.offset, value: BASE64.encode(&record.value) })
            }
        }
    }

    /// One server: `id rpc_addr` plus `leader` for the leader.
    pub(crate) fn server(&mut self, server: &Server) -> anyhow::Result<()> {
        match self.format {
            Output::Text => {
                let mark = if server.is_leader { " leader" } else { "" };
                self.line(format!("{} {}{mark}", server.id, server.rpc_addr).as_bytes())
            }
            Output::Json => self.json(&JsonServer {
                id: &server.id,
                rpc_addr: &server.rpc_addr,
                is_leader: server.is_leader,
            }),
        }
    }

    /// One log: `name lowest next bytes retention_bytes retention_ms`, the
    /// default log named `(default)` (in JSON, `""`).
    pub(crate) fn log(&mut self, log: &LogInfo) -> anyhow::Result<()> {
        match self.format {
            Output::Text => self.line(log_text(log).as_bytes()),
            Output::Json => self.json(&JsonLog::of(log)),
        }
    }

    fn json(&mut self, value: &impl Serialize) -> anyhow::Result<()> {
        let line = serde_json::to_vec(value)?;
        self.line(&line)
    }

    fn line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        if self.closed {
            return Ok(());
        }
        let written = self.out.write_all(line).and_then(|()| self.out.write_all(b"\n"));
        self.check(written)
    }

    /// Hands what is buffered to stdout.
    pub(crate) fn flush(&mut self) -> anyhow::Result<()> {
        if self.closed {
            return Ok(());
        }
        let flushed = self.out.flush();
        self.check(flushed)
    }

    fn check(&mut self, result: std::io::Result<()>) -> anyhow::Result<()> {
        match result {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(error) => Err(anyhow::anyhow!("cannot write to stdout: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_one_line_of_columns_and_the_default_log_is_named_so() {
        let log = |name: &str| LogInfo {
            name: name.into(),
            lowest: 1,
            next: 5,
            retention_bytes: 1024,
            retention_ms: 60_000,
            bytes: 300,
        };
        assert_eq!(log_text(&log("")), "(default) 1 5 300 1024 60000");
        assert_eq!(log_text(&log("orders")), "orders 1 5 300 1024 60000");
        let json = serde_json::to_string(&JsonLog::of(&log(""))).unwrap();
        let fields = r#""lowest":1,"next":5,"bytes":300,"retention_bytes":1024,"retention_ms":60000"#;
        assert_eq!(json, format!(r#"{{"name":"",{fields}}}"#));
    }
}
