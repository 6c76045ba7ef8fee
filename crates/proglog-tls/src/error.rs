//! Why TLS material could not be loaded or a TLS config built.

use std::path::PathBuf;

/// Why TLS material could not be loaded, or a config or dialer built. Each
/// variant about a file names it. Nothing is cached or changed when this is
/// returned: the call can be retried once the file is fixed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read (missing, a directory, no permission).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM block of the kind expected (a certificate, a private
    /// key): empty, the wrong file, or DER instead of PEM.
    #[error("{} holds no PEM block of the expected kind ({expected})", path.display())]
    NoPem {
        /// The file.
        path: PathBuf,
        /// What was looked for: `certificate` or `private key`.
        expected: &'static str,
    },
    /// A PEM block is malformed (bad base64, a section without its end).
    #[error("{}: malformed PEM: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate that cannot serve as a trust root (not a parsable X.509
    /// certificate).
    #[error("{}: bad certificate: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// A certificate chain and private key that do not make an identity: the key
    /// does not match the certificate, is of an unsupported kind, or the
    /// certificate cannot be parsed.
    #[error("{} does not go with the certificate in {}: {reason}", key_file.display(), cert_file.display())]
    KeyMismatch {
        /// The certificate chain's file.
        cert_file: PathBuf,
        /// The private key's file.
        key_file: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// A list of CA files was given empty where trust roots are required.
    #[error("no CA file given: {0} needs at least one trust root")]
    NoRoots(&'static str),
    /// A name a server certificate could not be checked against.
    #[error("invalid server name {name:?}: {reason}")]
    ServerName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An address that cannot be dialed (`host:port` expected).
    #[error("invalid address {address:?}: {reason}")]
    Address {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration itself (not its files): a bug, since
    /// the ring provider supports every protocol version asked for.
    #[error("tls configuration: {0}")]
    Config(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
