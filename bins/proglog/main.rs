//! `proglog`: the client CLI (SPEC §6). Produces records, consumes them, lists the
//! servers, manages logs (SPEC §11). Thin: flags (clap) → a `proglog_client::Client`
//! (of the log `--log` names) → one command.
//!
//! Exit codes: 0 success, 1 runtime error (connection, TLS, `PERMISSION_DENIED`,
//! `OUT_OF_RANGE`, a log that does not exist or already exists, unreadable
//! file...), 2 usage error (bad flags or flag values).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod commands;
mod connect;
mod output;
mod traces;

use crate::connect::TlsOptions;
use crate::output::Printer;

/// Exit code for bad flags or flag values.
const USAGE_ERROR: u8 = 2;

/// The address dialled without `--addr`.
const DEFAULT_ADDR: &str = "proglog://127.0.0.1:8400";

/// Client for a proglog cluster: produce records, consume them, list the servers, manage logs.
#[derive(Debug, Parser)]
#[command(name = "proglog", version, propagate_version = true)]
#[command(after_help = "Exit status: 0 on success, 1 on a runtime error (connection, TLS, \
                        permission denied, offset out of range, no such log, log already exists), \
                        2 on a usage error.")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand takes (before or after its name).
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection and output (before or after the subcommand)")]
struct Common {
    /// Where to connect: `proglog://host:port[,host:port...]` or `proglog:///host:port` for a
    /// cluster (any members as seeds: produces go to the leader, consumes to followers), or
    /// `host:port` for that one server only.
    #[arg(long, global = true, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    addr: String,

    /// CA certificate (PEM) that signed the server's certificate; given, the connection uses TLS.
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,

    /// Client certificate (PEM) to present (mutual TLS); needs --key-file and --ca-file.
    #[arg(long, global = true, value_name = "FILE")]
    cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cert-file.
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,

    /// Name the server's certificate must carry [default: the host part of --addr].
    #[arg(long, global = true, value_name = "NAME")]
    server_name: Option<String>,

    /// The log produce, consume and servers act on: a name matching `[a-z0-9][a-z0-9._-]{0,127}`
    /// (`--log ''` is the default log). A produce to a log that does not exist creates it, unless
    /// the servers run with `--auto-create-logs=false`; anything else on it fails.
    /// [default: the default log]
    #[arg(long, global = true, value_name = "NAME", value_parser = parse_log)]
    log: Option<String>,

    /// Output format: `text`, or `json` (one JSON object per line).
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = Output::Text)]
    output: Output,
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Offsets as numbers, values as (lossy) UTF-8, servers as `id rpc_addr [leader]`, logs as
    /// `name lowest next bytes retention_bytes retention_ms`.
    Text,
    /// `{"offset":N}`, `{"offset":N,"value":"<base64>"}`, `{"id":..,"rpc_addr":..,"is_leader":..}`,
    /// `{"name":..,"lowest":..,"next":..,"bytes":..,"retention_bytes":..,"retention_ms":..}`.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append records and print the offset of each.
    ///
    /// Each VALUE is one record; without VALUEs, each line of stdin is one record (without its
    /// line ending). One record is sent with Produce, more are pipelined over ProduceStream;
    /// produces go to the leader, also across a failover.
    Produce {
        /// Record values.
        #[arg(value_name = "VALUE", value_parser = clap::value_parser!(OsString))]
        values: Vec<OsString>,
    },
    /// Print record values, one per line (use --output json for binary values).
    ///
    /// Without --follow, reads from --offset to the end the log had when the command started.
    /// With --follow, keeps waiting for new records until interrupted, moving to another
    /// server if its server goes away.
    Consume {
        /// First offset to read [default: the lowest offset the log still holds].
        #[arg(long, value_name = "N")]
        offset: Option<u64>,
        /// Wait for new records at the end of the log instead of stopping there.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Stop after K records.
        #[arg(long, value_name = "K")]
        count: Option<u64>,
        /// Consume as consumer group G: start from the position it committed
        /// last (or the lowest offset), and commit what was printed as it goes
        /// (every second, and at the end).
        #[arg(long, value_name = "G", conflicts_with = "offset")]
        group: Option<String>,
        /// Read each record with a linearizable Consume: the server that answers first has every
        /// record acknowledged before the read (Raft ReadIndex: a heartbeat round of the leader
        /// per record). Without it, records stream from a follower. Not with --follow, whose
        /// stream waits for new records anyway.
        #[arg(long, conflicts_with = "follow")]
        linearizable: bool,
    },
    /// List the servers of the log's Raft group: id, RPC address and leader mark.
    ///
    /// Each log is a Raft group of its own: with --log, its servers and its leader, which may
    /// differ from the default log's.
    Servers,
    /// Create, delete or list logs (the default log and named logs).
    #[command(subcommand)]
    Logs(LogsCommand),
}

/// `proglog logs ...`: each names its log itself (not with --log).
#[derive(Debug, Subcommand)]
enum LogsCommand {
    /// Create a log; it fails if one of that name exists. Prints nothing.
    ///
    /// Without --retention-bytes or --retention-ms (or with 0) the log takes the servers'
    /// defaults for new logs (the agent's --retention-bytes and --retention-ms; 0 there keeps
    /// every record), as a log created by a first produce does.
    Create {
        /// The new log's name: `[a-z0-9][a-z0-9._-]{0,127}`.
        #[arg(value_name = "NAME", value_parser = parse_named_log)]
        name: String,
        /// Retention by size: the leader removes the oldest segments while the rest still hold
        /// at least N bytes (0: the servers' default).
        #[arg(long, value_name = "N", default_value_t = 0)]
        retention_bytes: u64,
        /// Retention by age: the leader removes the segments whose newest record is older than N
        /// milliseconds (0: the servers' default).
        #[arg(long, value_name = "N", default_value_t = 0)]
        retention_ms: u64,
    },
    /// Delete a log and its records, on every server; it fails if there is none. Prints nothing.
    ///
    /// The default log cannot be deleted.
    Delete {
        /// The log's name.
        #[arg(value_name = "NAME", value_parser = parse_named_log)]
        name: String,
    },
    /// List the logs, one per line: `name lowest next bytes retention_bytes retention_ms`.
    ///
    /// The default log comes first, named `(default)` (in JSON: `""`), then the others by name.
    /// Offsets lowest..next (exclusive) can be consumed; `bytes` is what the log's files hold on
    /// the server that answered; a retention of 0 keeps everything.
    List,
}

/// `--log`: a log name, or empty for the default log.
fn parse_log(name: &str) -> Result<String, String> {
    if name.is_empty() { Ok(String::new()) } else { parse_named_log(name) }
}

/// A named log's name.
fn parse_named_log(name: &str) -> Result<String, String> {
    match proglog_client::validate_log_name(name) {
        Ok(()) => Ok(name.to_owned()),
        Err(proglog_client::Error::InvalidLogName { reason, .. }) => Err(reason),
        Err(error) => Err(error.to_string()),
    }
}

/// A usage error found after parsing (a bad flag value): exit code 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help / --version
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `proglog` alone: the help, on stderr
            let _ = error.print();
            return ExitCode::from(USAGE_ERROR);
        }
        Err(error) => {
            let rendered = error.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("proglog: {first} (see 'proglog --help')");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    // One crypto provider for every TLS config in the process (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("proglog: {}", one_line(&format!("{error:#}")));
            if error.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(USAGE_ERROR)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { common, command } = cli;
    let tls = TlsOptions::new(common.ca_file, common.cert_file, common.key_file, common.server_name)?;
    let hint = |error: anyhow::Error| with_hint(error, tls.as_ref());
    let name = match &command {
        Command::Produce { .. } => "produce",
        Command::Consume { .. } => "consume",
        Command::Servers => "servers",
        Command::Logs(LogsCommand::Create { .. }) => "logs create",
        Command::Logs(LogsCommand::Delete { .. }) => "logs delete",
        Command::Logs(LogsCommand::List) => "logs list",
    };
    if matches!(command, Command::Logs(_)) && common.log.is_some() {
        return Err(UsageError(format!("--log does not apply to 'proglog {name}'")).into());
    }
    traces::traced(name, async {
        let client = connect::client(&common.addr, tls.as_ref()).await.map_err(hint)?;
        let client = match &common.log {
            Some(log) => client.log(log)?,
            None => client,
        };
        let mut out = Printer::new(common.output);
        let result = match command {
            Command::Produce { values } => commands::produce(&client, values, &mut out).await,
            Command::Consume { offset, follow, count, group, linearizable } => {
                let read = commands::Consume { offset, follow, count, group, linearizable };
                commands::consume(&client, &read, &mut out).await
            }
            Command::Servers => commands::servers(&client, &mut out).await,
            Command::Logs(LogsCommand::Create { name, retention_bytes, retention_ms }) => {
                let options = proglog_client::LogOptions { retention_bytes, retention_ms };
                client.create_log(&name, options).await.map_err(Into::into)
            }
            Command::Logs(LogsCommand::Delete { name }) => client.delete_log(&name).await.map_err(Into::into),
            Command::Logs(LogsCommand::List) => commands::list_logs(&client, &mut out).await,
        };
        // Whatever was printed before an error is still flushed.
        let flushed = out.flush();
        result.and(flushed).map_err(hint)
    })
    .await
}

/// `error`, with what to check when it is a failure below gRPC (a connection
/// or handshake that failed, likely a TLS mismatch).
fn with_hint(error: anyhow::Error, tls: Option<&TlsOptions>) -> anyhow::Error {
    let Some(client_error) = error.downcast_ref::<proglog_client::Error>() else {
        return error;
    };
    // A server's answer, no transport failure, or nobody listening: TLS is not the question.
    if !client_error.is_transport() || client_error.io_kind() == Some(std::io::ErrorKind::ConnectionRefused) {
        return error;
    }
    let hint = match tls {
        None => "if the server uses TLS, give --ca-file",
        Some(tls) if !tls.has_identity() => {
            "if the server requires a client certificate, give --cert-file and --key-file"
        }
        Some(_) => "the server may not trust the client certificate",
    };
    anyhow::anyhow!("{error} ({hint})")
}

/// Keeps an error message on one line.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("proglog").chain(args.iter().copied()))
    }

    #[test]
    fn the_flags_hold_together() {
        Cli::command().debug_assert();
    }

    #[test]
    fn log_names_are_checked_as_flags_and_the_empty_one_is_the_default_log() {
        let cli = parse(&["produce", "x", "--log", "orders.v2"]).unwrap();
        assert_eq!(cli.common.log.as_deref(), Some("orders.v2"));
        assert_eq!(parse(&["--log", "", "servers"]).unwrap().common.log.as_deref(), Some(""));
        assert_eq!(parse(&["servers"]).unwrap().common.log, None);
        for bad in ["Orders", "a/b", "-x", ".x"] {
            let error = parse(&["servers", &format!("--log={bad}")]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
        assert!(parse(&["logs", "create", ""]).is_err(), "the default log is not created");
        assert!(parse(&["logs", "delete", "No"]).is_err());
    }

    #[test]
    fn logs_subcommands_parse() {
        let cli = parse(&["logs", "create", "orders", "--retention-bytes", "1048576"]).unwrap();
        match cli.command {
            Command::Logs(LogsCommand::Create { name, retention_bytes, retention_ms }) => {
                assert_eq!((name.as_str(), retention_bytes, retention_ms), ("orders", 1 << 20, 0));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["logs", "delete", "orders"]).unwrap().command,
            Command::Logs(LogsCommand::Delete { .. })
        ));
        assert!(matches!(
            parse(&["logs", "list", "--output", "json"]).unwrap().command,
            Command::Logs(LogsCommand::List)
        ));
        assert!(parse(&["logs"]).is_err());
        assert!(parse(&["logs", "create", "orders", "--retention-ms", "-1"]).is_err());
    }

    #[test]
    fn linearizable_reads_do_not_follow() {
        assert!(matches!(
            parse(&["consume", "--linearizable", "--group", "g"]).unwrap().command,
            Command::Consume { linearizable: true, .. }
        ));
        let error = parse(&["consume", "--linearizable", "-f"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
