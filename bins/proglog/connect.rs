//! `--addr` parsing and the connection (plaintext, TLS, mutual TLS), dialed
//! through `proglog_tls`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proglog_tls::{Connector, Identity};
use tonic::transport::Channel;

use crate::UsageError;

/// How long to wait for a server's TCP (and TLS) handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The server `--addr` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host name or IP address, without IPv6 brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Target {
    /// Parses `host:port`, `proglog://host:port` or `proglog:///host:port` (IPv6
    /// hosts in brackets) as `proglog_client` does. The `proglog://` forms will
    /// select the leader-aware client; until the CLI is built on it they dial that
    /// one server too, so a single one is expected.
    pub(crate) fn parse(addr: &str) -> Result<Self, UsageError> {
        let bad = |why: &str| UsageError(format!("invalid --addr '{addr}': {why}"));
        let target = proglog_client::Target::parse(addr).map_err(|why| bad(&why))?;
        match target.seeds.as_slice() {
            [one] => Ok(Self { host: one.host.clone(), port: one.port }),
            _ => Err(bad("expected a single host:port")),
        }
    }

    /// `host:port`, with an IPv6 host in brackets.
    pub(crate) fn authority(&self) -> String {
        proglog_client::Authority { host: self.host.clone(), port: self.port }.to_addr()
    }
}

/// TLS material: on iff a CA file is given.
#[derive(Debug)]
pub(crate) struct TlsOptions {
    ca_file: PathBuf,
    /// Client certificate and key (mutual TLS).
    identity: Option<Identity>,
    server_name: Option<String>,
}

impl TlsOptions {
    /// Checks that the flags fit together; `None` means plaintext.
    pub(crate) fn new(
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        server_name: Option<String>,
    ) -> Result<Option<Self>, UsageError> {
        let identity = match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some(Identity::new(cert, key)),
            (None, None) => None,
            (Some(_), None) => return Err(UsageError("--cert-file needs --key-file".into())),
            (None, Some(_)) => return Err(UsageError("--key-file needs --cert-file".into())),
        };
        let Some(ca_file) = ca_file else {
            if identity.is_some() {
                return Err(UsageError("--cert-file and --key-file need --ca-file (TLS)".into()));
            }
            if server_name.is_some() {
                return Err(UsageError("--server-name needs --ca-file (TLS)".into()));
            }
            return Ok(None);
        };
        if server_name.as_deref().is_some_and(str::is_empty) {
            return Err(UsageError("--server-name is empty".into()));
        }
        Ok(Some(Self { ca_file, identity, server_name }))
    }

    /// Whether a client certificate is presented.
    pub(crate) fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The flag that named `path`. Files are read in flag order (CA,
    /// certificate, key), so a path given twice is named by its first flag,
    /// unless a key was looked for.
    fn flag_of(&self, path: &Path, expected: Option<&str>) -> &'static str {
        if expected == Some("private key") {
            "--key-file"
        } else if path == self.ca_file {
            "--ca-file"
        } else if self.identity.as_ref().is_some_and(|identity| identity.cert_file == path) {
            "--cert-file"
        } else {
            "--key-file"
        }
    }

    /// A TLS error naming the flag and the file, as the CLI's other errors do.
    fn error(&self, error: proglog_tls::Error) -> anyhow::Error {
        match error {
            proglog_tls::Error::Read { path, source } => {
                anyhow::anyhow!("cannot read {} {}: {source}", self.flag_of(&path, None), path.display())
            }
            proglog_tls::Error::NoPem { path, expected } => anyhow::anyhow!(
                "{} {} holds no PEM block ({expected})",
                self.flag_of(&path, Some(expected)),
                path.display()
            ),
            other => anyhow::anyhow!("invalid TLS settings: {other}"),
        }
    }

    /// The rustls config: trusting the CA, presenting the client certificate if given.
    fn client_config(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        let roots = std::slice::from_ref(&self.ca_file);
        proglog_tls::client_config(roots, self.identity.as_ref(), &[b"h2"]).map_err(|error| self.error(error))
    }

    /// The connector: verifying the server against the CA as `--server-name`
    /// (default: the host of `--addr`), presenting the client certificate if given.
    fn connector(&self, target: &Target) -> anyhow::Result<Connector> {
        let server_name = self.server_name.as_deref().unwrap_or(&target.host);
        Connector::tls(self.client_config()?, server_name).map_err(|error| self.error(error))
    }

    /// The same TLS for the leader-aware client.
    pub(crate) fn for_client(&self) -> anyhow::Result<proglog_client::Tls> {
        Ok(proglog_client::Tls { config: self.client_config()?, server_name: self.server_name.clone() })
    }
}

/// For `proglog://` addresses, the server the leader-aware client picks for
/// `call` (the leader for produces, a follower for consumes); for `host:port`,
/// or when the cluster cannot be asked, the server `--addr` names.
pub(crate) async fn pick(
    addr: &str,
    target: Target,
    tls: Option<&TlsOptions>,
    call: proglog_client::Call,
) -> anyhow::Result<Target> {
    if !addr.starts_with("proglog://") {
        return Ok(target);
    }
    let options = proglog_client::Options {
        tls: tls.map(TlsOptions::for_client).transpose()?,
        connect_timeout: CONNECT_TIMEOUT,
        ..proglog_client::Options::default()
    };
    let picked = match proglog_client::Client::connect(addr, options).await {
        Ok(client) => client.address_for(call).ok(),
        Err(_) => None, // dialing the named server reports why, with a hint
    };
    match picked {
        Some(picked) => Target::parse(&picked).map_err(Into::into),
        None => Ok(target),
    }
}

/// A channel to `target`, connected (TCP, and the TLS handshake with `tls`)
/// before this returns.
pub(crate) async fn connect(target: &Target, tls: Option<&TlsOptions>) -> anyhow::Result<Channel> {
    let connector = match tls {
        Some(tls) => tls.connector(target)?,
        None => Connector::plaintext(),
    };
    let endpoint = connector
        .endpoint(&target.authority())
        .map_err(|error| UsageError(format!("invalid --addr {}: {error}", target.authority())))?
        .connect_timeout(CONNECT_TIMEOUT);
    connector
        .connect(&endpoint)
        .await
        .map_err(|error| anyhow::anyhow!("cannot connect to {}: {}", target.authority(), error_chain(&error)))
}

/// An error and its sources as `a: b: c`, skipping a source whose text repeats the
/// previous one.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut last = message.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !last.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16) -> Target {
        Target { host: host.into(), port }
    }

    #[test]
    fn parses_every_address_form() {
        assert_eq!(Target::parse("127.0.0.1:8400").ok(), Some(target("127.0.0.1", 8400)));
        assert_eq!(Target::parse("proglog://node-1:9000").ok(), Some(target("node-1", 9000)));
        assert_eq!(Target::parse("proglog:///localhost:1").ok(), Some(target("localhost", 1)));
        assert_eq!(Target::parse("[::1]:8400").ok(), Some(target("::1", 8400)));
        assert_eq!(
            Target::parse("proglog://[::1]:8400").map(|t| t.authority()).ok(),
            Some("[::1]:8400".into())
        );
    }

    #[test]
    fn rejects_malformed_addresses_with_the_reason() {
        for (addr, reason) in [
            ("", "expected host:port"),
            ("localhost", "expected host:port"),
            (":8400", "the host is empty"),
            ("host:http", "not a port number"),
            ("host:0", "not a port number"),
            ("host:65536", "not a port number"),
            ("::1:8400", "brackets"),
            ("[::1", "unclosed"),
            ("http://host:1", "unsupported scheme 'http'"),
            ("proglog://a:1,b:2", "single host:port"),
            ("proglog://host:1/path", "expected host:port"),
        ] {
            match Target::parse(addr) {
                Ok(target) => panic!("{addr:?} parsed as {target:?}"),
                Err(error) => assert!(error.0.contains(reason), "{addr:?}: {error}"),
            }
        }
    }

    #[test]
    fn tls_flags_must_fit_together() {
        let path = || Some(PathBuf::from("x.pem"));
        assert!(matches!(TlsOptions::new(None, None, None, None), Ok(None)));
        assert!(matches!(TlsOptions::new(path(), None, None, None), Ok(Some(_))));
        assert!(matches!(TlsOptions::new(path(), path(), path(), Some("localhost".into())), Ok(Some(_))));
        assert!(TlsOptions::new(path(), path(), None, None).is_err());
        assert!(TlsOptions::new(path(), None, path(), None).is_err());
        assert!(TlsOptions::new(None, path(), path(), None).is_err());
        assert!(TlsOptions::new(None, None, None, Some("localhost".into())).is_err());
    }
}
