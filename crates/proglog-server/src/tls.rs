//! Server TLS from PEM files, for the gRPC port and the HTTP API alike. The
//! config itself is built by `proglog-tls` (rustls, ring).

use std::path::PathBuf;
use std::sync::Arc;

use crate::ServerError;

/// Server TLS material (SPEC §2): PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
    /// CA files for client certificates: with any, clients must present a
    /// certificate signed by one of their CAs (mutual TLS; the agent trusts
    /// its clients' CA and its peers' CA). Empty: no client certificate is
    /// requested.
    pub ca_files: Vec<PathBuf>,
}

impl TlsFiles {
    /// A rustls server config from the files, offering `alpn` protocols. A missing
    /// or unusable file is an error naming it.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        let identity = proglog_tls::Identity::new(&self.cert_file, &self.key_file);
        let client_roots = (!self.ca_files.is_empty()).then_some(&self.ca_files[..]);
        Ok(proglog_tls::server_config(&identity, client_roots, alpn)?)
    }

    /// [`TlsFiles::server_config`], where a client may also connect without a
    /// certificate (one it presents is still verified): for a port that answers
    /// such clients only what needs no identity (health probes).
    pub fn server_config_allowing_anonymous(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        if self.ca_files.is_empty() {
            return self.server_config(alpn);
        }
        let identity = proglog_tls::Identity::new(&self.cert_file, &self.key_file);
        Ok(proglog_tls::server_config_allowing_anonymous(&identity, &self.ca_files, alpn)?)
    }

    /// Clients must present a certificate (mutual TLS).
    pub fn requires_client_certificates(&self) -> bool {
        !self.ca_files.is_empty()
    }
}
