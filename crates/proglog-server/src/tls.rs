//! Server TLS from PEM files, for the gRPC port and the HTTP API alike: rustls
//! with the ring provider, mutual when a client CA is given.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

fn pem_error(path: &Path, error: pem::Error) -> ServerError {
    match error {
        pem::Error::Io(source) => ServerError::ReadFile { path: path.into(), source },
        pem::Error::NoItemsFound => ServerError::BadPem {
            path: path.into(),
            reason: "holds no PEM block of the expected kind".into(),
        },
        other => ServerError::BadPem { path: path.into(), reason: other.to_string() },
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| pem_error(path, error))?;
    if certificates.is_empty() {
        return Err(pem_error(path, pem::Error::NoItemsFound));
    }
    Ok(certificates)
}

impl TlsFiles {
    /// A rustls server config from the files, offering `alpn` protocols. A missing
    /// or unusable file is an error naming it.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(&self.cert_file)?;
        let key =
            PrivateKeyDer::from_pem_file(&self.key_file).map_err(|error| pem_error(&self.key_file, error))?;
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| ServerError::Tls(error.to_string()))?;
        let builder = match &self.ca_file {
            Some(ca_file) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in certificates(ca_file)? {
                    roots.add(certificate).map_err(|error| ServerError::BadPem {
                        path: ca_file.clone(),
                        reason: error.to_string(),
                    })?;
                }
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|error| ServerError::BadPem {
                            path: ca_file.clone(),
                            reason: error.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|error| {
            ServerError::Tls(format!("{} and {}: {error}", self.cert_file.display(), self.key_file.display()))
        })?;
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Arc::new(config))
    }
}
