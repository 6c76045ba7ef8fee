//! Config precedence and validation: defaults < file < flags; every error names
//! its key.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use proglog_agent::{AgentConfig, ConfigLayer, FsyncPolicy};

fn flags(args: &[&str]) -> ConfigLayer {
    ConfigLayer::try_parse_from(std::iter::once("proglog-agent").chain(args.iter().copied())).unwrap()
}

fn error_key(args: &[&str]) -> String {
    AgentConfig::load(flags(args)).unwrap_err().key
}

#[test]
fn the_example_config_parses_to_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proglog-agent.example.toml");
    let config = AgentConfig::load(flags(&["--config-file", path])).unwrap();
    let defaults = AgentConfig { node_name: "node-0".into(), ..AgentConfig::default() };
    assert_eq!(config, defaults);
}

#[test]
fn no_flags_is_a_single_node_on_loopback() {
    let config = AgentConfig::load(flags(&[])).unwrap();
    assert!(config.bootstrap);
    assert_eq!(config.rpc_addr().to_string(), "127.0.0.1:8400");
    assert_eq!(config.http_addr.unwrap().to_string(), "127.0.0.1:8402");
    assert_eq!(config.fsync, FsyncPolicy::Always);
    assert_eq!(config.max_record_bytes, 1 << 20);
}

#[test]
fn flags_override_the_file_and_the_file_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "fsync = \"never\"\nrpc-port = 9000\nraft-heartbeat-interval = \"50ms\"\n")
        .unwrap();
    let path = file.to_str().unwrap();
    let config = AgentConfig::load(flags(&["--config-file", path, "--rpc-port", "9100"])).unwrap();
    assert_eq!(config.fsync, FsyncPolicy::Never);
    assert_eq!(config.rpc_port, 9100);
    assert_eq!(config.raft_heartbeat_interval, Duration::from_millis(50));
}

#[test]
fn bootstrap_defaults_to_true_only_without_join_addresses() {
    let joining = AgentConfig::load(flags(&["--start-join-addrs", "127.0.0.1:9401,127.0.0.1:9402"])).unwrap();
    assert!(!joining.bootstrap);
    assert_eq!(joining.start_join_addrs.len(), 2);
    let forced = AgentConfig::load(flags(&["--start-join-addrs", "127.0.0.1:9401", "--bootstrap"])).unwrap();
    assert!(forced.bootstrap);
}

#[test]
fn plaintext_off_loopback_needs_insecure() {
    assert_eq!(error_key(&["--bind-addr", "0.0.0.0:8401"]), "bind-addr");
    assert_eq!(error_key(&["--http-addr", "0.0.0.0:8402"]), "http-addr");
    AgentConfig::load(flags(&["--bind-addr", "0.0.0.0:8401", "--http-addr", "", "--insecure"])).unwrap();
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
    AgentConfig::load(flags(&[&tls[..], &["--gossip-key-file", "Cargo.toml"]].concat())).unwrap();
}

#[test]
fn limits_come_from_flags_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "max-connections = 50\nidle-timeout = \"30s\"\n").unwrap();
    let path = file.to_str().unwrap();
    let config = AgentConfig::load(flags(&["--config-file", path, "--max-concurrent-calls", "7"])).unwrap();
    assert_eq!((config.max_connections, config.http_max_connections), (50, 256));
    assert_eq!(config.max_concurrent_calls, 7);
    assert_eq!(config.idle_timeout, Duration::from_secs(30));
}

#[test]
fn bad_toml_names_the_key() {
    for (text, key) in [
        ("fsync = \"sometimes\"\n", "fsync"),
        ("rpc-port = \"high\"\n", "rpc-port"),
        ("no-such-key = 1\n", "no-such-key"),
        ("raft-election-timeout = \"soon\"\n", "raft-election-timeout"),
        ("config-file = \"x.toml\"\n", "config-file"),
    ] {
        assert_eq!(ConfigLayer::from_toml(text).unwrap_err().key, key, "{text}");
    }
}

#[test]
fn the_server_trusts_the_peer_ca_beside_the_client_ca() {
    let ca_files = |server_ca: Option<&str>, peer_ca: Option<&str>| {
        let config = AgentConfig {
            server_tls_cert_file: Some("server.pem".into()),
            server_tls_key_file: Some("server-key.pem".into()),
            server_tls_ca_file: server_ca.map(PathBuf::from),
            peer_tls_ca_file: peer_ca.map(PathBuf::from),
            ..AgentConfig::default()
        };
        config.server_tls().unwrap().ca_files
    };
    let path = PathBuf::from;
    assert_eq!(ca_files(Some("ca.pem"), Some("peer-ca.pem")), [path("ca.pem"), path("peer-ca.pem")]);
    assert_eq!(ca_files(Some("ca.pem"), Some("ca.pem")), [path("ca.pem")]);
    assert_eq!(ca_files(Some("ca.pem"), None), [path("ca.pem")]);
    // Without client authentication, peers are not asked for a certificate either.
    assert!(ca_files(None, Some("peer-ca.pem")).is_empty());
}
