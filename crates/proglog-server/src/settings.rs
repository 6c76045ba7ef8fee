//! [`Settings`]: what an operator chooses for serving (SPEC §2–3): the ACL,
//! TLS for clients and peers, and the bounds on connections and calls —
//! each key declared once, with its default, its rule and its documentation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proglog_raft::InvalidSetting;
use serde::{Deserialize, Serialize};

use crate::{PeerTls, TlsFiles};

/// How a node serves and dials its peers. Keys are kebab-case
/// (`max-connections`); a TOML table may set any subset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args), group(skip))]
pub struct Settings {
    /// casbin ACL model file (default none: every authenticated client is allowed)
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub acl_model_file: Option<PathBuf>,
    /// casbin ACL policy file (default none)
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub acl_policy_file: Option<PathBuf>,
    /// Server certificate (PEM); with the key, the RPC and HTTP ports serve TLS (default none)
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub server_tls_cert_file: Option<PathBuf>,
    /// Server private key (PEM) (default none)
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub server_tls_key_file: Option<PathBuf>,
    /// CA that client certificates must be signed by: requires mutual TLS (default none)
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub server_tls_ca_file: Option<PathBuf>,
    /// Certificate this agent presents to other agents (default none)
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub peer_tls_cert_file: Option<PathBuf>,
    /// Key of the peer certificate (default none)
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub peer_tls_key_file: Option<PathBuf>,
    /// CA of other agents' certificates; with server-tls-ca-file, the RPC and
    /// HTTP ports also accept client certificates it signed (other agents dial
    /// the same port) (default none)
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub peer_tls_ca_file: Option<PathBuf>,
    /// Peers' certificates must name the node they claim (CN or DNS SAN), on
    /// every agent-to-agent call, and peers are dialled by node name
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)
    )]
    pub peer_tls_require_node_name: bool,
    /// Connections the RPC port serves at once; at the cap the longest-idle one
    /// makes room, or the new one is refused
    #[cfg_attr(feature = "clap", arg(long, value_name = "COUNT"))]
    pub max_connections: usize,
    /// Connections the HTTP port serves at once
    #[cfg_attr(feature = "clap", arg(long, value_name = "COUNT"))]
    pub http_max_connections: usize,
    /// Calls in progress at once on the RPC port, streams included; more are
    /// refused with RESOURCE_EXHAUSTED
    #[cfg_attr(feature = "clap", arg(long, value_name = "COUNT"))]
    pub max_concurrent_calls: usize,
    /// Close connections with no call in progress for this long
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "DURATION", value_parser = humantime::parse_duration))]
    pub idle_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            acl_model_file: None,
            acl_policy_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            server_tls_ca_file: None,
            peer_tls_cert_file: None,
            peer_tls_key_file: None,
            peer_tls_ca_file: None,
            peer_tls_require_node_name: false,
            max_connections: 1024,
            http_max_connections: 256,
            max_concurrent_calls: 1024,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

impl Settings {
    /// Checks every rule (pairs that go together, files that must be readable,
    /// positive bounds); the error names the key. Nothing is read but the
    /// files' metadata.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let both = |(a, a_file): (&'static str, &Option<PathBuf>),
                    (b, b_file): (&'static str, &Option<PathBuf>)| {
            match (a_file, b_file) {
                (Some(_), None) => Err(InvalidSetting::new(b, format!("required with {a}"))),
                (None, Some(_)) => Err(InvalidSetting::new(a, format!("required with {b}"))),
                _ => Ok(()),
            }
        };
        both(
            ("server-tls-cert-file", &self.server_tls_cert_file),
            ("server-tls-key-file", &self.server_tls_key_file),
        )?;
        both(("acl-model-file", &self.acl_model_file), ("acl-policy-file", &self.acl_policy_file))?;
        if self.server_tls_cert_file.is_none() && self.server_tls_ca_file.is_some() {
            return Err(InvalidSetting::new(
                "server-tls-ca-file",
                "needs server-tls-cert-file and server-tls-key-file",
            ));
        }
        if self.peer_tls_require_node_name
            && (self.peer_tls_cert_file.is_none() || self.server_tls_ca_file.is_none())
        {
            return Err(InvalidSetting::new(
                "peer-tls-require-node-name",
                "needs peer-tls-cert-file and server-tls-ca-file (peers' certificates are what it checks)",
            ));
        }
        for (key, file) in [
            ("acl-model-file", &self.acl_model_file),
            ("acl-policy-file", &self.acl_policy_file),
            ("server-tls-cert-file", &self.server_tls_cert_file),
            ("server-tls-key-file", &self.server_tls_key_file),
            ("server-tls-ca-file", &self.server_tls_ca_file),
            ("peer-tls-cert-file", &self.peer_tls_cert_file),
            ("peer-tls-key-file", &self.peer_tls_key_file),
            ("peer-tls-ca-file", &self.peer_tls_ca_file),
        ] {
            check_readable(key, file.as_deref())?;
        }
        for (key, value) in [
            ("max-connections", self.max_connections),
            ("http-max-connections", self.http_max_connections),
            ("max-concurrent-calls", self.max_concurrent_calls),
        ] {
            if value == 0 {
                return Err(InvalidSetting::new(key, "must be positive"));
            }
        }
        if self.idle_timeout.is_zero() {
            return Err(InvalidSetting::new("idle-timeout", "must be positive"));
        }
        Ok(())
    }

    /// TLS for the RPC and HTTP listeners, if configured. With
    /// `server-tls-ca-file`, client certificates are required and may be signed
    /// by that CA or by `peer-tls-ca-file` (other agents dial the same port).
    /// Without it no client certificate is requested, from peers either.
    pub fn server_tls(&self) -> Option<TlsFiles> {
        let mut ca_files: Vec<PathBuf> = self.server_tls_ca_file.iter().cloned().collect();
        if let (Some(_), Some(peer_ca)) = (&self.server_tls_ca_file, &self.peer_tls_ca_file)
            && !ca_files.contains(peer_ca)
        {
            ca_files.push(peer_ca.clone());
        }
        Some(TlsFiles {
            cert_file: self.server_tls_cert_file.clone()?,
            key_file: self.server_tls_key_file.clone()?,
            ca_files,
        })
    }

    /// How this node dials other agents: with `peer-tls-cert-file` and
    /// `peer-tls-key-file`, mutual TLS presenting that identity and trusting
    /// `peer-tls-ca-file` and `server-tls-ca-file` (whichever are set) to have
    /// signed the other agents' server certificates; plaintext otherwise.
    pub fn peer_tls(&self) -> Result<PeerTls, proglog_tls::Error> {
        let (Some(cert_file), Some(key_file)) = (&self.peer_tls_cert_file, &self.peer_tls_key_file) else {
            return Ok(PeerTls::Plaintext);
        };
        let mut roots: Vec<PathBuf> = self.peer_tls_ca_file.iter().cloned().collect();
        if let Some(server_ca) = &self.server_tls_ca_file
            && !roots.contains(server_ca)
        {
            roots.push(server_ca.clone());
        }
        let identity = proglog_tls::Identity::new(cert_file, key_file);
        let config = proglog_tls::client_config(&roots, Some(&identity), &[b"h2"])?;
        Ok(if self.peer_tls_require_node_name { PeerTls::NamedTls(config) } else { PeerTls::Tls(config) })
    }
}

/// Refuses `file` (the value of `key`) unless it names a readable file.
pub fn check_readable(key: &'static str, file: Option<&Path>) -> Result<(), InvalidSetting> {
    match file {
        Some(path) if !path.is_file() => {
            Err(InvalidSetting::new(key, format!("{} is not a readable file", path.display())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_their_own_rules() {
        Settings::default().validate().expect("valid");
    }

    #[test]
    fn the_server_trusts_the_peer_ca_beside_the_client_ca() {
        let ca_files = |server_ca: Option<&str>, peer_ca: Option<&str>| {
            let settings = Settings {
                server_tls_cert_file: Some("server.pem".into()),
                server_tls_key_file: Some("server-key.pem".into()),
                server_tls_ca_file: server_ca.map(PathBuf::from),
                peer_tls_ca_file: peer_ca.map(PathBuf::from),
                ..Settings::default()
            };
            settings.server_tls().expect("TLS is on").ca_files
        };
        let path = PathBuf::from;
        assert_eq!(ca_files(Some("ca.pem"), Some("peer-ca.pem")), [path("ca.pem"), path("peer-ca.pem")]);
        assert_eq!(ca_files(Some("ca.pem"), Some("ca.pem")), [path("ca.pem")]);
        assert_eq!(ca_files(Some("ca.pem"), None), [path("ca.pem")]);
        // Without client authentication, peers are not asked for a certificate either.
        assert!(ca_files(None, Some("peer-ca.pem")).is_empty());
    }
}
