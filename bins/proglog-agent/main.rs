//! `proglog-agent`: flags + TOML → `AgentConfig`, a log drain, signals. Thin: the
//! composition lives in the `proglog-agent` crate.

use std::process::ExitCode;

use proglog_agent::{Agent, AgentConfig, LoadError, LogFormat, LogLevel};
use slog::{Drain, Logger, error, o};

/// Exit code for bad flags or config (before anything is written).
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let config = match AgentConfig::load(std::env::args_os()) {
        Ok(config) => config,
        Err(LoadError::Exit(text)) => {
            // --help / --version
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(LoadError::Invalid(error)) => {
            eprintln!("proglog-agent: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    // One crypto provider for every TLS config in the process (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_descriptor_limit();
    let (logger, _flush_on_drop) = logger(config.log_format, config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(logger, "cannot start the runtime"; "error" => %error);
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(config, logger.clone()));
    drop(runtime);
    code
}

async fn run(config: AgentConfig, logger: Logger) -> ExitCode {
    // Listening starts before the agent logs that it is serving: a signal sent
    // as soon as that line appears must not be lost.
    let shutdown_signal = match shutdown_signal() {
        Ok(signal) => signal,
        Err(failure) => {
            error!(logger, "cannot listen for signals"; "error" => %failure);
            return ExitCode::FAILURE;
        }
    };
    let agent = match Agent::start(config, logger.clone()).await {
        Ok(agent) => agent,
        Err(failure) => {
            error!(logger, "cannot start"; "error" => %failure);
            return ExitCode::FAILURE;
        }
    };
    let failed = agent.failed();
    tokio::select! {
        () = shutdown_signal => {}
        reason = failed => {
            agent.abort(&reason).await;
            // The last line says why, for whoever restarts the node.
            error!(logger, "stopped: the node failed"; "reason" => reason);
            return ExitCode::FAILURE;
        }
    }
    match agent.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            error!(logger, "unclean shutdown"; "error" => %failure);
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open file descriptors to the hard limit (as Go's
/// runtime does): the agent sizes its connection caps to what it gets.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Listens for SIGINT and SIGTERM from now on; the future resolves on the
/// first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// The process's log drain (to stderr), asynchronous, level-filtered; records
/// are flushed when the returned guard drops.
fn logger(format: LogFormat, level: LogLevel) -> (Logger, slog_async::AsyncGuard) {
    let level = match level {
        LogLevel::Trace => slog::Level::Trace,
        LogLevel::Debug => slog::Level::Debug,
        LogLevel::Info => slog::Level::Info,
        LogLevel::Warn => slog::Level::Warning,
        LogLevel::Error => slog::Level::Error,
    };
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match format {
        LogFormat::Term => {
            let decorator = slog_term::PlainDecorator::new(std::io::stderr());
            Box::new(slog_term::FullFormat::new(decorator).build().fuse())
        }
        LogFormat::Json => Box::new(slog_json::Json::default(std::io::stderr()).fuse()),
    };
    // Filter before the asynchronous channel: records below the level are dropped
    // where they are made, instead of crowding the channel (which drops what does
    // not fit) and costing a copy each.
    let (drain, guard) = slog_async::Async::new(drain).build_with_guard();
    (Logger::root(drain.filter_level(level).fuse(), o!()), guard)
}
