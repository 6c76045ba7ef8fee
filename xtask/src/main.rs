//! `cargo xtask`: project chores that need more than one cargo command.
//!
//! - `cargo xtask bench [log] [server] [cluster] [client] [traces] [-- ARGS]`: run the benchmarks (all when none
//!   is named; release build) and print their Markdown tables; `--quick` for a short
//!   smoke run.
//! - `cargo xtask ci`: what CI runs (`.ci/run`): fmt check, clippy, tests, deploy-check.
//! - `cargo xtask certs [DIR] [--hosts H1,H2,..] [--nodes N1,N2,..]`: write a development
//!   CA, server and client certificates and a casbin ACL into DIR (default `certs/` at the
//!   workspace root), replacing any set already there. The server certificate names
//!   `--hosts` (default `localhost,127.0.0.1`; a wildcard such as
//!   `*.proglog.default.svc.cluster.local` covers a StatefulSet's pods); with `--nodes`, a
//!   certificate per node (for `--peer-tls-require-node-name`).
//! - `cargo xtask image`: build the container image (`deploy/Containerfile`) and print its size.
//! - `cargo xtask deploy-check`: check the Helm chart (render, lint, validate), build the
//!   image, run a cluster of its containers, and run the chart's pods through a rolling
//!   restart (see `deploy.rs`).

mod deploy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const BENCHES: &[(&str, &str)] = &[
    ("log", "proglog-log"),
    ("server", "proglog-server"),
    ("cluster", "proglog-server"),
    ("logs", "proglog-server"),
    ("client", "proglog"),
    ("traces", "proglog"),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("ci") => run("bash", &[".ci/run"]),
        Some("certs") => match certs_args(&args[1..]) {
            Some(args) => certs(args),
            None => usage(),
        },
        Some("image") if args.len() == 1 => deploy::image().map(drop),
        Some("deploy-check") if args.len() == 1 => deploy::check(),
        _ => usage(),
    }
}

fn usage() -> Result<()> {
    eprintln!(
        "usage: cargo xtask bench [log] [server] [cluster] [client] [traces] [--quick] | cargo xtask ci | \
         cargo xtask certs [DIR] [--hosts H1,H2,..] [--nodes N1,N2,..] | cargo xtask image | \
         cargo xtask deploy-check"
    );
    std::process::exit(2);
}

/// What `cargo xtask certs` writes.
struct CertsArgs {
    dir: Option<PathBuf>,
    hosts: Vec<String>,
    nodes: Vec<String>,
}

/// `[DIR] [--hosts H1,H2,..] [--nodes N1,N2,..]`, in any order.
fn certs_args(args: &[String]) -> Option<CertsArgs> {
    let list = |text: &String| text.split(',').filter(|item| !item.is_empty()).map(str::to_owned).collect();
    let mut parsed =
        CertsArgs { dir: None, hosts: vec!["localhost".into(), "127.0.0.1".into()], nodes: Vec::new() };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" => parsed.nodes = list(args.next()?),
            "--hosts" => parsed.hosts = list(args.next()?),
            flag if flag.starts_with('-') => return None,
            _ if parsed.dir.is_none() => parsed.dir = Some(PathBuf::from(arg)),
            _ => return None,
        }
    }
    (!parsed.hosts.is_empty()).then_some(parsed)
}

fn bench(args: &[String]) -> Result<()> {
    let (names, extra): (Vec<&String>, Vec<&String>) = args.iter().partition(|arg| !arg.starts_with('-'));
    let selected: Vec<&(&str, &str)> = if names.is_empty() {
        BENCHES.iter().collect()
    } else {
        names
            .iter()
            .map(|name| {
                BENCHES.iter().find(|(bench, _)| bench == name).with_context(|| {
                    let known: Vec<&str> = BENCHES.iter().map(|(bench, _)| *bench).collect();
                    format!("unknown benchmark {name:?}; known: {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    for (bench, package) in selected {
        // Only the named bench target: the libraries' unit-test harnesses reject `--quick`.
        let mut cargo_args = vec!["bench", "--package", package, "--bench", bench, "--"];
        cargo_args.extend(extra.iter().map(|arg| arg.as_str()));
        run("cargo", &cargo_args)?;
    }
    Ok(())
}

fn certs(CertsArgs { dir, hosts, nodes }: CertsArgs) -> Result<()> {
    let dir = match dir {
        Some(dir) => dir,
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest directory has no parent")?
            .join("certs"),
    };
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let set = proglog_certs::write_dev_set_with_nodes(&dir, &hosts, &nodes)?;
    // Flags are shown relative to the current directory when the set lies under it.
    let cwd = std::env::current_dir().unwrap_or_default();
    println!("wrote a new development PKI to {} (replacing any set there):", set.dir.display());
    for (path, what) in [
        (&set.ca_cert, "CA certificate (its key is not kept)"),
        (&set.server_cert, &format!("server certificate for {}", hosts.join(", "))),
        (&set.server_key, "server key (0600)"),
        (&set.root_client_cert, "client certificate, CN root: may produce, consume, replicate"),
        (&set.root_client_key, "root client key (0600)"),
        (&set.nobody_client_cert, "client certificate, CN nobody: allowed nothing"),
        (&set.nobody_client_key, "nobody client key (0600)"),
        (&set.acl_model, "casbin model"),
        (&set.acl_policy, "casbin policy"),
        (&set.gossip_key, "gossip key (0600), shared by the agents of a cluster"),
    ] {
        println!("  {:<24} {what}", file_name(path));
    }
    let [ca, server, server_key, root, root_key, model, policy, gossip] = [
        &set.ca_cert,
        &set.server_cert,
        &set.server_key,
        &set.root_client_cert,
        &set.root_client_key,
        &set.acl_model,
        &set.acl_policy,
        &set.gossip_key,
    ]
    .map(|path| path.strip_prefix(&cwd).unwrap_or(path).display());
    println!();
    println!("agent with mutual TLS and the ACL:");
    println!("  --server-tls-cert-file {server} --server-tls-key-file {server_key} \\");
    println!("  --server-tls-ca-file {ca} --acl-model-file {model} --acl-policy-file {policy} \\");
    println!("  --gossip-key-file {gossip}");
    println!("agent-to-agent identity (CN root, allowed to replicate):");
    println!("  --peer-tls-cert-file {root} --peer-tls-key-file {root_key} --peer-tls-ca-file {ca}");
    for node in &set.nodes {
        let (cert, key) = (
            node.cert.strip_prefix(&cwd).unwrap_or(&node.cert),
            node.key.strip_prefix(&cwd).unwrap_or(&node.key),
        );
        println!("node {} (its server and peer certificate, with --peer-tls-require-node-name):", node.name);
        println!(
            "  --node-name {} --server-tls-cert-file {c} --server-tls-key-file {k} \\",
            node.name,
            c = cert.display(),
            k = key.display()
        );
        println!(
            "  --peer-tls-cert-file {c} --peer-tls-key-file {k} --peer-tls-ca-file {ca} --peer-tls-require-node-name",
            c = cert.display(),
            k = key.display()
        );
    }
    println!("client (proglog CLI):");
    println!("  --ca-file {ca} --cert-file {root} --key-file {root_key}");
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program).args(args).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}
