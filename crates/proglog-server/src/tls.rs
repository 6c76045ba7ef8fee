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
    /// With a CA, clients must present a certificate it signed (mutual TLS).
    pub ca_file: Option<PathBuf>,
}

impl TlsFiles {
    /// A rustls server config from the files, offering `alpn` protocols. A missing
    /// or unusable file is an error naming it.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        let identity = proglog_tls::Identity::new(&self.cert_file, &self.key_file);
        let client_roots = self.ca_file.as_ref().map(std::slice::from_ref);
        Ok(proglog_tls::server_config(&identity, client_roots, alpn)?)
    }
}
