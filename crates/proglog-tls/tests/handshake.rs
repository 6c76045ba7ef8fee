//! The configs of `proglog-tls` against each other, with certificates minted per
//! test: mutual TLS over an in-memory pipe, which CA's clients a server admits,
//! the errors that name bad files, and the [`Connector`] over real TCP.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::slice::from_ref;
use std::sync::Arc;

use proglog_certs::{Ca, CertifiedKey};
use proglog_tls::{Connector, Error, Identity, client_config, server_config};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Certificates of one test, as PEM files in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn ca(&self, name: &str, ca: &Ca) -> PathBuf {
        self.write(&format!("{name}.pem"), &ca.cert_pem())
    }

    fn identity(&self, name: &str, key: &CertifiedKey) -> Identity {
        Identity::new(
            self.write(&format!("{name}.pem"), &key.cert_pem),
            self.write(&format!("{name}-key.pem"), &key.key_pem),
        )
    }
}

/// A server identity for `localhost`, a client certificate for `root`, both
/// signed by a fresh CA, written to `files`: (CA file, server, client).
fn pki(files: &Files, name: &str) -> (PathBuf, Identity, Identity) {
    let ca = Ca::new(&format!("{name} CA")).unwrap();
    let server =
        files.identity(&format!("{name}-server"), &ca.server_cert(&["localhost", "127.0.0.1"]).unwrap());
    let client = files.identity(&format!("{name}-client"), &ca.client_cert("root").unwrap());
    (files.ca(name, &ca), server, client)
}

/// What each side of a handshake saw.
struct Outcome {
    server: std::io::Result<()>,
    client: std::io::Result<()>,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        self.server.is_ok() && self.client.is_ok()
    }

    fn server_error(&self) -> String {
        match &self.server {
            Ok(()) => panic!("the server accepted the handshake"),
            Err(error) => error.to_string(),
        }
    }
}

/// A handshake over an in-memory pipe, then one byte each way.
async fn handshake(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> Outcome {
    let (client_io, server_io) = tokio::io::duplex(64 << 10);
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut byte = [0u8];
        tls.read_exact(&mut byte).await?;
        tls.write_all(&byte).await?;
        tls.flush().await
    };
    let client_side = async move {
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, client_io).await?;
        tls.write_all(b"x").await?;
        let mut byte = [0u8];
        tls.read_exact(&mut byte).await?;
        assert_eq!(&byte, b"x");
        Ok(())
    };
    let (server, client) = tokio::join!(server_side, client_side);
    Outcome { server, client }
}

#[tokio::test]
async fn mutual_tls_succeeds_with_the_right_ca() {
    let files = Files::new();
    let (ca, server, client) = pki(&files, "one");
    let outcome = handshake(
        server_config(&server, Some(from_ref(&ca)), &[b"h2"]).unwrap(),
        client_config(&[ca], Some(&client), &[b"h2"]).unwrap(),
    )
    .await;
    assert!(outcome.succeeded(), "{:?} {:?}", outcome.server.err(), outcome.client.err());
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_rejected() {
    let files = Files::new();
    let (ca, server, _) = pki(&files, "one");
    let (_, _, stranger) = pki(&files, "other");
    let outcome = handshake(
        server_config(&server, Some(from_ref(&ca)), &[b"h2"]).unwrap(),
        client_config(&[ca], Some(&stranger), &[b"h2"]).unwrap(),
    )
    .await;
    let error = outcome.server_error();
    assert!(error.contains("invalid peer certificate") && error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn a_server_trusting_two_client_roots_accepts_clients_of_either() {
    let files = Files::new();
    let (client_ca, server, client) = pki(&files, "clients");
    let (peer_ca, _, peer) = pki(&files, "peers");
    let (_, _, stranger) = pki(&files, "strangers");
    let server = server_config(&server, Some(&[client_ca.clone(), peer_ca]), &[b"h2"]).unwrap();
    for (name, identity) in [("client", &client), ("peer", &peer)] {
        let client = client_config(from_ref(&client_ca), Some(identity), &[b"h2"]).unwrap();
        let outcome = handshake(Arc::clone(&server), client).await;
        assert!(outcome.succeeded(), "{name}: {:?} {:?}", outcome.server.err(), outcome.client.err());
    }
    let client = client_config(&[client_ca], Some(&stranger), &[b"h2"]).unwrap();
    let error = handshake(server, client).await.server_error();
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn client_roots_decide_whether_a_client_certificate_is_required() {
    let files = Files::new();
    let (ca, server, _) = pki(&files, "one");
    let anonymous = client_config(from_ref(&ca), None, &[b"h2"]).unwrap();
    let mutual = server_config(&server, Some(from_ref(&ca)), &[b"h2"]).unwrap();
    let error = handshake(mutual, Arc::clone(&anonymous)).await.server_error();
    assert!(error.contains("peer sent no certificates"), "{error}");
    let open = server_config(&server, None, &[b"h2"]).unwrap();
    assert!(handshake(open, anonymous).await.succeeded());
    // An empty list is a mistake, not a request for no client authentication.
    let error = server_config(&server, Some(&[]), &[b"h2"]).unwrap_err();
    assert!(matches!(error, Error::NoRoots(_)), "{error:?}");
    assert!(matches!(client_config(&[], None, &[]), Err(Error::NoRoots(_))));
}

#[tokio::test]
async fn a_server_allowing_anonymous_clients_still_verifies_a_certificate_it_is_shown() {
    let files = Files::new();
    let (ca, server, client) = pki(&files, "one");
    let (_, _, stranger) = pki(&files, "other");
    let server = proglog_tls::server_config_allowing_anonymous(&server, from_ref(&ca), &[b"h2"]).unwrap();
    for (name, identity) in [("no certificate", None), ("a valid one", Some(&client))] {
        let config = client_config(from_ref(&ca), identity, &[b"h2"]).unwrap();
        let outcome = handshake(Arc::clone(&server), config).await;
        assert!(outcome.succeeded(), "{name}: {:?} {:?}", outcome.server.err(), outcome.client.err());
    }
    let config = client_config(from_ref(&ca), Some(&stranger), &[b"h2"]).unwrap();
    let error = handshake(server, config).await.server_error();
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[test]
fn a_missing_file_is_named() {
    let files = Files::new();
    let (ca, server, client) = pki(&files, "one");
    let missing = files.dir.path().join("missing.pem");
    let errors = [
        server_config(&Identity::new(&missing, &server.key_file), None, &[]).unwrap_err(),
        server_config(&Identity::new(&server.cert_file, &missing), None, &[]).unwrap_err(),
        server_config(&server, Some(&[ca.clone(), missing.clone()]), &[]).unwrap_err(),
        client_config(from_ref(&missing), None, &[]).unwrap_err(),
        client_config(&[ca], Some(&Identity::new(&client.cert_file, &missing)), &[]).unwrap_err(),
    ];
    for error in errors {
        assert!(matches!(error, Error::Read { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.starts_with("cannot read ") && message.contains("missing.pem"), "{message}");
    }
}

#[test]
fn a_file_without_pem_blocks_is_named() {
    let files = Files::new();
    let (ca, server, _) = pki(&files, "one");
    let policy = files.write("policy.csv", "p, root, *, produce\n");
    let errors = [
        server_config(&Identity::new(&policy, &server.key_file), None, &[]).unwrap_err(),
        server_config(&Identity::new(&server.cert_file, &policy), None, &[]).unwrap_err(),
        server_config(&server, Some(&[ca, policy.clone()]), &[]).unwrap_err(),
        client_config(&[policy], None, &[]).unwrap_err(),
    ];
    for error in errors {
        assert!(matches!(error, Error::NoPem { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("no PEM") && message.contains("policy.csv"), "{message}");
    }
}

#[test]
fn a_key_not_matching_its_certificate_is_named() {
    let files = Files::new();
    let (ca, server, client) = pki(&files, "one");
    let mixed = Identity::new(&server.cert_file, &client.key_file);
    for error in
        [server_config(&mixed, None, &[]).unwrap_err(), client_config(&[ca], Some(&mixed), &[]).unwrap_err()]
    {
        assert!(matches!(error, Error::KeyMismatch { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("one-client-key.pem") && message.contains("one-server.pem"), "{message}");
    }
}

/// A TLS server on 127.0.0.1 that echoes one byte per connection.
async fn echo_server(config: Option<Arc<rustls::ServerConfig>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let config = config.clone();
            tokio::spawn(async move {
                let mut byte = [0u8];
                match config {
                    Some(config) => {
                        let Ok(mut tls) = TlsAcceptor::from(config).accept(tcp).await else { return };
                        let _ = tls.read_exact(&mut byte).await;
                        let _ = tls.write_all(&byte).await;
                        let _ = tls.flush().await;
                    }
                    None => {
                        let mut tcp = tcp;
                        let _ = tcp.read_exact(&mut byte).await;
                        let _ = tcp.write_all(&byte).await;
                    }
                }
            });
        }
    });
    addr
}

async fn echo_through(connector: &Connector, addr: std::net::SocketAddr) -> std::io::Result<()> {
    use tower::Service;
    let uri = connector.endpoint(&addr.to_string()).unwrap().uri().clone();
    let io = connector.clone().call(uri).await?;
    let mut stream = io.into_inner();
    stream.write_all(b"y").await?;
    let mut byte = [0u8];
    stream.read_exact(&mut byte).await?;
    assert_eq!(&byte, b"y");
    Ok(())
}

#[tokio::test]
async fn the_connector_dials_tcp_then_tls_checking_the_server_name() {
    let files = Files::new();
    let (ca, server, client) = pki(&files, "one");
    let addr = echo_server(Some(server_config(&server, Some(from_ref(&ca)), &[b"h2"]).unwrap())).await;
    let config = client_config(&[ca], Some(&client), &[b"h2"]).unwrap();
    for name in ["localhost", "127.0.0.1"] {
        let connector = Connector::tls(Arc::clone(&config), name).unwrap();
        echo_through(&connector, addr).await.unwrap();
        let endpoint = connector.endpoint(&addr.to_string()).unwrap();
        assert_eq!(endpoint.uri().scheme_str(), Some("http"), "tonic must not add its own TLS");
    }
    let connector = Connector::tls(config, "elsewhere.example").unwrap();
    let error = echo_through(&connector, addr).await.unwrap_err().to_string();
    assert!(error.contains("invalid peer certificate") && error.contains("not valid for name"), "{error}");

    let plain = echo_server(None).await;
    echo_through(&Connector::plaintext(), plain).await.unwrap();
}
