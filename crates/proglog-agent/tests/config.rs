//! Config precedence and validation: defaults < file < flags; every error names
//! its key.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use proglog_agent::{AgentConfig, ConfigError, LoadError};
use proglog_raft::Fsync;

fn load(args: &[&str]) -> Result<AgentConfig, ConfigError> {
    match AgentConfig::load(std::iter::once("proglog-agent").chain(args.iter().copied())) {
        Ok(config) => Ok(config),
        Err(LoadError::Invalid(error)) => Err(error),
        Err(LoadError::Exit(text)) => panic!("not a config: {text}"),
    }
}

fn error_key(args: &[&str]) -> String {
    load(args).unwrap_err().key
}

/// The keys the example file sets and the ones it shows commented out
/// (`# key = value`).
fn example_keys() -> (toml::Table, Vec<String>) {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let commented = text
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter_map(|line| line.split_once(" = "))
        .map(|(key, _)| key.to_owned())
        .filter(|key| key.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect();
    (text.parse().unwrap(), commented)
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proglog-agent.example.toml");

#[test]
fn the_example_config_parses_to_the_defaults() {
    let config = load(&["--config-file", EXAMPLE]).unwrap();
    let defaults = AgentConfig { node_name: "node-0".into(), ..AgentConfig::default() };
    assert_eq!(AgentConfig { config_file: None, ..config }, defaults);
}

#[test]
fn the_example_config_and_help_show_every_key() {
    let (set, commented) = example_keys();
    let help = AgentConfig::command().render_long_help().to_string();
    let keys: Vec<String> = AgentConfig::command()
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        .filter(|key| key != "config-file")
        .collect();
    assert!(keys.len() >= 30, "{keys:?}");
    for key in &keys {
        assert!(set.contains_key(key) || commented.contains(key), "{key} is missing from the example file");
        assert!(help.contains(&format!("--{key}")), "{key} is missing from --help");
    }
    for key in set.keys().chain(&commented) {
        assert!(keys.contains(key), "the example file shows {key}, which is no key");
    }
    // Each default --help shows is the value the code uses.
    let defaults = toml::Table::try_from(AgentConfig::default()).unwrap();
    for key in ["rpc-port", "fsync", "max-record-bytes", "raft-election-timeout", "idle-timeout"] {
        let shown = match &defaults[key] {
            toml::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        assert!(help.contains(&format!("[default: {shown}]")), "--help shows no default {shown} for {key}");
    }
}

#[test]
fn help_and_version_are_not_errors() {
    for flag in ["--help", "--version"] {
        assert!(matches!(AgentConfig::load(["proglog-agent", flag]), Err(LoadError::Exit(_))), "{flag}");
    }
}

#[test]
fn no_flags_is_a_single_node_on_loopback() {
    let config = load(&[]).unwrap();
    assert!(config.bootstrap());
    assert_eq!(config.rpc_addr().to_string(), "127.0.0.1:8400");
    assert_eq!(config.http_addr.0.unwrap().to_string(), "127.0.0.1:8402");
    assert_eq!(config.log.fsync, Fsync::Always);
    assert_eq!(config.log.max_record_bytes, 1 << 20);
}

#[test]
fn flags_override_the_file_and_the_file_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "fsync = \"never\"\nrpc-port = 9000\nraft-heartbeat-interval = \"50ms\"\n")
        .unwrap();
    let path = file.to_str().unwrap();
    let config = load(&["--config-file", path, "--rpc-port", "9100"]).unwrap();
    assert_eq!(config.log.fsync, Fsync::Never);
    assert_eq!(config.rpc_port, 9100);
    assert_eq!(config.log.raft_heartbeat_interval, Duration::from_millis(50));
}

#[test]
fn bootstrap_defaults_to_true_only_without_join_addresses() {
    let joining = load(&["--start-join-addrs", "127.0.0.1:9401,127.0.0.1:9402"]).unwrap();
    assert!(!joining.bootstrap());
    assert_eq!(joining.start_join_addrs.len(), 2);
    let forced = load(&["--start-join-addrs", "127.0.0.1:9401", "--bootstrap"]).unwrap();
    assert!(forced.bootstrap());
}

#[test]
fn a_join_address_naming_this_node_is_skipped() {
    // What a StatefulSet gives every pod: pod 0's name. Pod 0 bootstraps, the others join it.
    let seed = "proglog-0.proglog.default.svc.cluster.local:8401";
    let pod = |name: &str| {
        load(&[
            "--bind-addr=0.0.0.0:8401",
            "--insecure",
            &format!("--advertise-addr={name}.proglog.default.svc.cluster.local"),
            &format!("--start-join-addrs={seed}"),
        ])
        .unwrap()
    };
    let (first, second) = (pod("proglog-0"), pod("proglog-1"));
    assert!(first.bootstrap());
    assert_eq!(first.join_addrs().count(), 0);
    assert!(!second.bootstrap());
    assert_eq!(second.join_addrs().map(ToString::to_string).collect::<Vec<_>>(), [seed]);
    // The same host on another port is another node; case does not make a name another.
    let other_port = load(&["--bind-addr=127.0.0.1:8401", "--start-join-addrs=127.0.0.1:8501"]).unwrap();
    assert!(!other_port.bootstrap());
    let upper = load(&["--bind-addr=localhost:8401", "--start-join-addrs=LOCALHOST:8401"]).unwrap();
    assert!(upper.bootstrap());
    // An explicit flag still wins.
    let forced =
        load(&["--bind-addr=127.0.0.1:8401", "--start-join-addrs=127.0.0.1:8401", "--bootstrap=false"]);
    assert!(!forced.unwrap().bootstrap());
}

#[test]
fn plaintext_off_loopback_needs_insecure() {
    assert_eq!(error_key(&["--bind-addr", "0.0.0.0:8401"]), "bind-addr");
    assert_eq!(error_key(&["--http-addr", "0.0.0.0:8402"]), "http-addr");
    load(&[
        "--bind-addr",
        "0.0.0.0:8401",
        "--http-addr",
        "",
        "--insecure",
        "--advertise-addr",
        "node-0.example",
    ])
    .unwrap();
}

#[test]
fn contradictions_name_their_key() {
    assert_eq!(error_key(&["--server-tls-cert-file", "Cargo.toml"]), "server-tls-key-file");
    assert_eq!(error_key(&["--acl-model-file", "Cargo.toml"]), "acl-policy-file");
    assert_eq!(error_key(&["--server-tls-ca-file", "/nonexistent/ca.pem"]), "server-tls-ca-file");
    assert_eq!(error_key(&["--max-record-bytes", "0"]), "max-record-bytes");
    assert_eq!(error_key(&["--segment-max-index-bytes", "4"]), "segment-max-index-bytes");
    assert_eq!(error_key(&["--raft-election-timeout", "200ms"]), "raft-election-timeout");
    assert_eq!(error_key(&["--bind-addr", "not-an-address"]), "bind-addr");
    assert_eq!(error_key(&["--max-connections", "0"]), "max-connections");
    assert_eq!(error_key(&["--http-max-connections", "0"]), "http-max-connections");
    assert_eq!(error_key(&["--max-concurrent-calls", "0"]), "max-concurrent-calls");
    assert_eq!(error_key(&["--idle-timeout", "0s"]), "idle-timeout");
    let tls = ["--server-tls-cert-file", "Cargo.toml", "--server-tls-key-file", "Cargo.toml"];
    assert_eq!(error_key(&tls), "gossip-key-file", "TLS without an authenticated gossip");
    load(&[&tls[..], &["--gossip-key-file", "Cargo.toml"]].concat()).unwrap();
    assert_eq!(error_key(&["--no-such-flag", "1"]), "no-such-flag");
    assert_eq!(error_key(&["--rpc-port", "high"]), "rpc-port");
}

#[test]
fn limits_come_from_flags_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "max-connections = 50\nidle-timeout = \"30s\"\n").unwrap();
    let path = file.to_str().unwrap();
    let config = load(&["--config-file", path, "--max-concurrent-calls", "7"]).unwrap();
    let serving = &config.serving;
    assert_eq!((serving.max_connections, serving.http_max_connections), (50, 256));
    assert_eq!(serving.max_concurrent_calls, 7);
    assert_eq!(serving.idle_timeout, Duration::from_secs(30));
}

#[test]
fn bad_toml_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    let path = file.to_str().unwrap();
    for (text, key) in [
        ("fsync = \"sometimes\"\n", "fsync"),
        ("rpc-port = \"high\"\n", "rpc-port"),
        ("no-such-key = 1\n", "no-such-key"),
        ("raft-election-timeout = \"soon\"\n", "raft-election-timeout"),
        ("config-file = \"x.toml\"\n", "config-file"),
        ("max-record-bytes = 0\n", "max-record-bytes"),
        ("data-dir = { a = 1 }\n", "data-dir"),
        ("rpc-port = \n", "rpc-port"),
    ] {
        std::fs::write(&file, text).unwrap();
        assert_eq!(error_key(&["--config-file", path]), key, "{text}");
    }
}

#[test]
fn lists_and_flags_from_the_file_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    let text =
        "start-join-addrs = [\"127.0.0.1:9401\", \"127.0.0.1:9402\"]\ninsecure = true\nhttp-addr = \"\"\n";
    std::fs::write(&file, text).unwrap();
    let path = file.to_str().unwrap();
    let config = load(&["--config-file", path]).unwrap();
    let addrs: Vec<String> = config.start_join_addrs.iter().map(ToString::to_string).collect();
    assert_eq!(addrs, ["127.0.0.1:9401", "127.0.0.1:9402"]);
    assert!(config.insecure && config.http_addr.0.is_none());
    // A list on the command line replaces the file's, it does not add to it.
    let config =
        load(&["--config-file", path, "--start-join-addrs", "127.0.0.1:9403", "--insecure=false"]).unwrap();
    assert_eq!(config.start_join_addrs.len(), 1);
    assert_eq!(config.start_join_addrs[0].to_string(), "127.0.0.1:9403");
    assert!(!config.insecure);
}

#[test]
fn addresses_may_name_hosts_and_an_unspecified_bind_needs_an_advertised_host() {
    let config = load(&[
        "--bind-addr",
        "localhost:8401",
        "--start-join-addrs",
        "proglog-0.proglog.ns.svc:8401,[::1]:9",
    ])
    .unwrap();
    assert_eq!(config.bind_addr.host, "localhost");
    let joins: Vec<String> = config.start_join_addrs.iter().map(ToString::to_string).collect();
    assert_eq!(joins, ["proglog-0.proglog.ns.svc:8401", "[::1]:9"]);
    assert_eq!(config.rpc_addr(), "localhost:8400");
    for bad in ["no-port", "host:port", "bad_name:1", ":1", "[nope]:1"] {
        assert_eq!(error_key(&["--bind-addr", bad]), "bind-addr", "{bad}");
    }
    assert_eq!(error_key(&["--start-join-addrs", "bad host:1"]), "start-join-addrs");
    // Bound to every interface, others need a host to dial.
    assert_eq!(
        error_key(&["--bind-addr", "0.0.0.0:8401", "--insecure", "--http-addr", ""]),
        "advertise-addr"
    );
    let pod = [
        "--bind-addr",
        "0.0.0.0:8401",
        "--insecure",
        "--advertise-addr",
        "proglog-1.proglog.default.svc.cluster.local",
    ];
    let config = load(&pod).unwrap();
    assert_eq!(config.rpc_addr(), "proglog-1.proglog.default.svc.cluster.local:8400");
    assert_eq!(error_key(&["--advertise-addr", "not a host"]), "advertise-addr");
}
