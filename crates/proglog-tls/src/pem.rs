//! PEM files → rustls' DER types, with errors naming the file.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

fn pem_error(path: &Path, expected: &'static str, error: pem::Error) -> Error {
    match error {
        pem::Error::Io(source) => Error::Read { path: path.into(), source },
        pem::Error::NoItemsFound => Error::NoPem { path: path.into(), expected },
        other => Error::BadPem { path: path.into(), reason: other.to_string() },
    }
}

/// Every certificate in a PEM file, in file order (a chain: the leaf first).
/// Other PEM blocks (a key in the same file) are skipped; a file without any
/// certificate is [`Error::NoPem`].
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let expected = "certificate";
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| pem_error(path, expected, error))?;
    if certificates.is_empty() {
        return Err(Error::NoPem { path: path.into(), expected });
    }
    Ok(certificates)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| pem_error(path, "private key", error))
}

/// One root store holding every certificate of every file (several CAs may be
/// trusted at once: the clients' CA and the peers' CA). An empty list is
/// [`Error::NoRoots`]: `what` says what needed them.
pub fn load_roots(ca_files: &[PathBuf], what: &'static str) -> Result<RootCertStore> {
    if ca_files.is_empty() {
        return Err(Error::NoRoots(what));
    }
    let mut roots = RootCertStore::empty();
    for path in ca_files {
        for certificate in load_certificates(path)? {
            roots
                .add(certificate)
                .map_err(|error| Error::BadCertificate { path: path.clone(), reason: error.to_string() })?;
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = load_certificates(&missing).unwrap_err();
        assert!(matches!(error, Error::Read { .. }), "{error:?}");
        assert!(error.to_string().contains("missing.pem"), "{error}");
        let error = load_private_key(&missing).unwrap_err();
        assert!(error.to_string().starts_with("cannot read ") && error.to_string().contains("missing.pem"));
    }

    #[test]
    fn a_file_without_the_expected_pem_block_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = proglog_certs::Ca::new("test CA").unwrap();
        let text = file(&dir, "policy.csv", "p, root, *, produce\n");
        let key_only = file(&dir, "key.pem", &ca.client_cert("root").unwrap().key_pem);
        let cert_only = file(&dir, "cert.pem", &ca.cert_pem());
        for (error, name, expected) in [
            (load_certificates(&text).unwrap_err(), "policy.csv", "certificate"),
            (load_certificates(&key_only).unwrap_err(), "key.pem", "certificate"),
            (load_private_key(&cert_only).unwrap_err(), "cert.pem", "private key"),
        ] {
            let message = error.to_string();
            assert!(matches!(error, Error::NoPem { .. }), "{error:?}");
            assert!(message.contains(name) && message.contains("no PEM") && message.contains(expected));
        }
    }

    #[test]
    fn malformed_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let torn = file(&dir, "torn.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let error = load_certificates(&torn).unwrap_err();
        assert!(matches!(error, Error::BadPem { .. }), "{error:?}");
        assert!(error.to_string().contains("torn.pem"), "{error}");
    }

    #[test]
    fn roots_merge_every_file_and_need_one() {
        let dir = tempfile::tempdir().unwrap();
        let one = file(&dir, "one.pem", &proglog_certs::Ca::new("one").unwrap().cert_pem());
        let two = file(&dir, "two.pem", &proglog_certs::Ca::new("two").unwrap().cert_pem());
        assert_eq!(load_roots(&[one, two], "test").unwrap().len(), 2);
        assert!(matches!(load_roots(&[], "test"), Err(Error::NoRoots("test"))));
    }

    #[test]
    fn a_root_that_is_not_a_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let bad = file(&dir, "bad-ca.pem", garbage);
        let error = load_roots(&[bad], "test").unwrap_err();
        assert!(matches!(error, Error::BadCertificate { .. }), "{error:?}");
        assert!(error.to_string().contains("bad-ca.pem"), "{error}");
    }
}
