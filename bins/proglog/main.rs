//! `proglog`: the client CLI (SPEC §6). Produces records, consumes them, lists the
//! servers. Thin: flags (clap) → a `proglog_client::Client` → one command.
//!
//! Exit codes: 0 success, 1 runtime error (connection, TLS, `PERMISSION_DENIED`,
//! `OUT_OF_RANGE`, unreadable file...), 2 usage error (bad flags or flag values).

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

/// Client for a proglog cluster: produce records, consume them, list the servers.
#[derive(Debug, Parser)]
#[command(name = "proglog", version, propagate_version = true)]
#[command(after_help = "Exit status: 0 on success, 1 on a runtime error (connection, TLS, \
                        permission denied, offset out of range), 2 on a usage error.")]
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

    /// Output format: `text`, or `json` (one JSON object per line).
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = Output::Text)]
    output: Output,
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Offsets as numbers, values as (lossy) UTF-8, servers as `id rpc_addr [leader]`.
    Text,
    /// `{"offset":N}`, `{"offset":N,"value":"<base64>"}`, `{"id":..,"rpc_addr":..,"is_leader":..}`.
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
    },
    /// List the servers of the cluster: id, RPC address and leader mark.
    Servers,
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
    };
    traces::traced(name, async {
        let client = connect::client(&common.addr, tls.as_ref()).await.map_err(hint)?;
        let mut out = Printer::new(common.output);
        let result = match command {
            Command::Produce { values } => commands::produce(&client, values, &mut out).await,
            Command::Consume { offset, follow, count, group } => {
                commands::consume(&client, offset, follow, count, group.as_deref(), &mut out).await
            }
            Command::Servers => commands::servers(&client, &mut out).await,
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
