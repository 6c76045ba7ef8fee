//! rustls server and client configs from PEM files, always with the ring
//! provider.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use crate::pem::{load_certificates, load_private_key, load_roots};
use crate::{Error, Result};

/// A certificate chain (leaf first) and its private key, as PEM files: what a
/// server presents, or a client for mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The certificate chain.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl Identity {
    /// The identity in `cert_file` and `key_file`.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self { cert_file: cert_file.into(), key_file: key_file.into() }
    }

    fn mismatch(&self, error: rustls::Error) -> Error {
        Error::KeyMismatch {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            reason: error.to_string(),
        }
    }
}

/// The one crypto provider every config uses, named explicitly so that no
/// config depends on a process default (which a library must not install).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(error: impl std::fmt::Display) -> Error {
    Error::Config(error.to_string())
}

fn alpn_protocols(alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    alpn.iter().map(|protocol| protocol.to_vec()).collect()
}

/// A server config presenting `identity` and offering the `alpn` protocols
/// (`h2`; `http/1.1` too for the HTTP API).
///
/// With `client_roots`, clients must present a certificate signed by one of the
/// CAs in those files (mutual TLS): every certificate of every file is trusted,
/// so a server can admit its clients' CA and its peers' CA at once. `None`
/// requests no client certificate; `Some(&[])` is [`Error::NoRoots`], never a
/// silent downgrade to no client authentication.
///
/// A missing or unusable file, or a key that does not match the certificate, is
/// an error naming the file.
pub fn server_config(
    identity: &Identity,
    client_roots: Option<&[PathBuf]>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    build_server_config(identity, client_roots, false, alpn)
}

/// [`server_config`] verifying client certificates against `client_roots`,
/// where a client may also connect without one (a certificate it presents must
/// still be valid): whoever serves decides what such a client may do (the
/// agent's HTTP port answers only its health probes, as a kubelet sends none).
pub fn server_config_allowing_anonymous(
    identity: &Identity,
    client_roots: &[PathBuf],
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    build_server_config(identity, Some(client_roots), true, alpn)
}

fn build_server_config(
    identity: &Identity,
    client_roots: Option<&[PathBuf]>,
    anonymous: bool,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let chain = load_certificates(&identity.cert_file)?;
    let key = load_private_key(&identity.key_file)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match client_roots {
        Some(ca_files) => {
            let roots = load_roots(ca_files, "client authentication")?;
            // Cannot fail: the store holds at least one root and no CRLs.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if anonymous { verifier.allow_unauthenticated() } else { verifier };
            let verifier = verifier.build().map_err(config_error)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|error| identity.mismatch(error))?;
    config.alpn_protocols = alpn_protocols(alpn);
    Ok(Arc::new(config))
}

/// A client config that trusts the CAs in `roots` (every certificate of every
/// file; at least one file), presents `identity` if given (mutual TLS), and
/// offers the `alpn` protocols.
///
/// A missing or unusable file, or a key that does not match the certificate, is
/// an error naming the file.
pub fn client_config(
    roots: &[PathBuf],
    identity: Option<&Identity>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>> {
    let roots = load_roots(roots, "verifying the server")?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => {
            let chain = load_certificates(&identity.cert_file)?;
            let key = load_private_key(&identity.key_file)?;
            builder.with_client_auth_cert(chain, key).map_err(|error| identity.mismatch(error))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn_protocols(alpn);
    Ok(Arc::new(config))
}
