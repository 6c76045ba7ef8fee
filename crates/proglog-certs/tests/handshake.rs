//! The minted PKI works with rustls (ring provider): a mutual-TLS handshake in memory
//! (no sockets) between a server that requires a client certificate from the CA and a
//! client that trusts the CA, over TLS 1.3 and 1.2; and the server rejects client
//! certificates from another CA, expired ones and none at all.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::sync::Arc;

use proglog_certs::{Ca, CertifiedKey, write_dev_set};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig,
    ServerConnection, SupportedProtocolVersion,
};

const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn roots(ca_pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem) {
        roots.add(cert).unwrap();
    }
    Arc::new(roots)
}

/// A server that requires a client certificate signed by `ca_pem` (what the agent does
/// with `--server-tls-ca-file`).
fn server_config(
    ca_pem: &str,
    server: &CertifiedKey,
    versions: &[&'static SupportedProtocolVersion],
) -> ServerConfig {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider()).build().unwrap();
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&server.cert_pem), key(&server.key_pem))
        .unwrap()
}

fn client_config(
    ca_pem: &str,
    client: Option<&CertifiedKey>,
    versions: &[&'static SupportedProtocolVersion],
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots(ca_pem));
    match client {
        Some(client) => builder.with_client_auth_cert(certs(&client.cert_pem), key(&client.key_pem)).unwrap(),
        None => builder.with_no_client_auth(),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Moves everything `from` wants to send into `to`, which processes it.
fn pump(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).unwrap();
    }
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

/// Runs the handshake to its end, or to the first side that fails and its error.
fn handshake(
    server: ServerConfig,
    client: ClientConfig,
    server_name: &str,
) -> Result<(Connection, Connection), (Side, rustls::Error)> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut client = Connection::from(ClientConnection::new(Arc::new(client), name).unwrap());
    let mut server = Connection::from(ServerConnection::new(Arc::new(server)).unwrap());
    for _ in 0..10 {
        pump(&mut client, &mut server).map_err(|e| (Side::Server, e))?;
        pump(&mut server, &mut client).map_err(|e| (Side::Client, e))?;
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok((client, server));
        }
    }
    panic!("handshake did not finish in 10 round trips");
}

fn read_file(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn dev_set_completes_mutual_tls_and_server_sees_client_cn() {
    let dir = tempfile::tempdir().unwrap();
    let set = write_dev_set(dir.path()).unwrap();
    let ca_pem = read_file(&set.ca_cert);
    let server = CertifiedKey { cert_pem: read_file(&set.server_cert), key_pem: read_file(&set.server_key) };
    let clients = [
        (
            "root",
            CertifiedKey {
                cert_pem: read_file(&set.root_client_cert),
                key_pem: read_file(&set.root_client_key),
            },
        ),
        (
            "nobody",
            CertifiedKey {
                cert_pem: read_file(&set.nobody_client_cert),
                key_pem: read_file(&set.nobody_client_key),
            },
        ),
    ];

    for versions in [TLS13, TLS12] {
        for server_name in ["localhost", "127.0.0.1"] {
            for (cn, client) in &clients {
                let context = format!("{:?} {server_name} {cn}", versions[0].version);
                let (mut client_conn, mut server_conn) = handshake(
                    server_config(&ca_pem, &server, versions),
                    client_config(&ca_pem, Some(client), versions),
                    server_name,
                )
                .unwrap_or_else(|e| panic!("{context}: {e:?}"));
                assert_eq!(client_conn.protocol_version(), Some(versions[0].version), "{context}");

                // Application data flows, and the server sees the client identity in the CN.
                client_conn.writer().write_all(b"produce").unwrap();
                pump(&mut client_conn, &mut server_conn).unwrap();
                let mut received = [0u8; 16];
                let n = server_conn.reader().read(&mut received).unwrap();
                assert_eq!(&received[..n], b"produce", "{context}");

                let peer = &server_conn.peer_certificates().unwrap()[0];
                let (_, cert) = x509_parser::parse_x509_certificate(peer.as_ref()).unwrap();
                let subject = cert.subject().iter_common_name().next().unwrap().as_str().unwrap();
                assert_eq!(subject, *cn, "{context}");
            }
        }
    }
}

/// Runs the handshake of a server of `ca` against `client_cert` and returns the server's error.
fn server_rejection(
    ca: &Ca,
    client_cert: Option<&CertifiedKey>,
    versions: &[&'static SupportedProtocolVersion],
) -> rustls::Error {
    let server = ca.server_cert(&["localhost"]).unwrap();
    match handshake(
        server_config(&ca.cert_pem(), &server, versions),
        client_config(&ca.cert_pem(), client_cert, versions),
        "localhost",
    ) {
        Ok(_) => panic!("handshake succeeded"),
        Err((side, error)) => {
            assert_eq!(side, Side::Server, "{error:?}");
            error
        }
    }
}

#[test]
fn server_rejects_client_cert_from_another_ca() {
    let ca = Ca::new("server CA").unwrap();
    let other = Ca::new("other CA").unwrap();
    let stranger = other.client_cert("root").unwrap();
    for versions in [TLS13, TLS12] {
        let error = server_rejection(&ca, Some(&stranger), versions);
        assert_eq!(error, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
    }
}

#[test]
fn server_rejects_expired_client_cert() {
    let ca = Ca::new("server CA").unwrap();
    let expired = ca.expired_client_cert("root").unwrap();
    for versions in [TLS13, TLS12] {
        let error = server_rejection(&ca, Some(&expired), versions);
        assert!(
            matches!(
                error,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            ),
            "{error:?}"
        );
    }
}

#[test]
fn server_rejects_missing_client_cert() {
    let ca = Ca::new("server CA").unwrap();
    for versions in [TLS13, TLS12] {
        assert_eq!(server_rejection(&ca, None, versions), rustls::Error::NoCertificatesPresented);
    }
}

#[test]
fn client_rejects_server_from_another_ca_or_for_another_name() {
    let ca = Ca::new("trusted CA").unwrap();
    let other = Ca::new("other CA").unwrap();
    let client = ca.client_cert("root").unwrap();

    let impostor = other.server_cert(&["localhost"]).unwrap();
    let result = handshake(
        server_config(&ca.cert_pem(), &impostor, TLS13),
        client_config(&ca.cert_pem(), Some(&client), TLS13),
        "localhost",
    );
    assert!(
        matches!(
            result,
            Err((Side::Client, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)))
        ),
        "{:?}",
        result.err()
    );

    let server = ca.server_cert(&["localhost", "127.0.0.1"]).unwrap();
    let result = handshake(
        server_config(&ca.cert_pem(), &server, TLS13),
        client_config(&ca.cert_pem(), Some(&client), TLS13),
        "example.com",
    );
    assert!(
        matches!(
            result,
            Err((
                Side::Client,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
                )
            ))
        ),
        "{:?}",
        result.err()
    );
}
