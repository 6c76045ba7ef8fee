//! The client the flags describe: `--addr` and TLS (plaintext, TLS, mutual
//! TLS) for `proglog_client`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proglog_client::{Client, Options};
use proglog_tls::Identity;

use crate::UsageError;

/// How long to wait for a server's TCP (and TLS) handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// The client's TLS: trusting the CA, presenting the client certificate if
    /// given, verifying servers as `--server-name` (default: each server's host).
    fn for_client(&self) -> anyhow::Result<proglog_client::Tls> {
        Ok(proglog_client::Tls { config: self.client_config()?, server_name: self.server_name.clone() })
    }
}

/// Connects to `addr` (`host:port`: that server; `proglog://`: the cluster,
/// whose servers it learns).
pub(crate) async fn client(addr: &str, tls: Option<&TlsOptions>) -> anyhow::Result<Client> {
    if let Err(reason) = proglog_client::Target::parse(addr) {
        return Err(UsageError(format!("invalid --addr '{addr}': {reason}")).into());
    }
    let options = Options {
        tls: tls.map(TlsOptions::for_client).transpose()?,
        connect_timeout: CONNECT_TIMEOUT,
        ..Options::default()
    };
    Ok(Client::connect(addr, options).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
