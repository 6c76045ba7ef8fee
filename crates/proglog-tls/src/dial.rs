//! Dialing a tonic [`Channel`] over TCP, plaintext or through a rustls
//! [`ClientConfig`] (tonic 0.14's own `ClientTlsConfig` cannot take one).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

use crate::{Error, Result};

/// How to reach a gRPC server: a TCP connection (`TCP_NODELAY` set), then,
/// for TLS, a handshake with a [`ClientConfig`] that checks the server's
/// certificate against a given name (sent as SNI when it is a DNS name).
/// Plaintext goes through the same type, so callers have one code path.
///
/// It is the `tower::Service<Uri>` tonic's `Endpoint::connect_with_connector`
/// takes; [`Connector::endpoint`], [`Connector::connect`] and
/// [`Connector::connect_lazy`] do the wiring. Cheap to clone: many channels
/// (one per peer) can share one config.
#[derive(Clone)]
pub struct Connector {
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let server_name = self.tls.as_ref().map(|(_, name)| name.to_str());
        f.debug_struct("Connector").field("tls_server_name", &server_name).finish()
    }
}

impl Connector {
    /// Dials plaintext (HTTP/2 without TLS).
    pub fn plaintext() -> Self {
        Self { tls: None }
    }

    /// Dials with TLS: the server's certificate must be valid for
    /// `server_name` (a DNS name, or an IP address matched against IP SANs)
    /// and signed by a root of `config`. The config should offer ALPN `h2`.
    pub fn tls(config: Arc<ClientConfig>, server_name: &str) -> Result<Self> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|error| Error::ServerName { name: server_name.to_owned(), reason: error.to_string() })?;
        Ok(Self { tls: Some((TlsConnector::from(config), name)) })
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The endpoint for `address` (`host:port`, an IPv6 host in brackets) to
    /// configure (timeouts, keep-alive) and then hand to [`Connector::connect`]
    /// or [`Connector::connect_lazy`]. Requests name the scheme `https` over
    /// TLS. The endpoint's own TCP settings (`tcp_nodelay`, `tcp_keepalive`) do
    /// not apply: this connector opens the sockets.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint> {
        let invalid = |reason: String| Error::Address { address: address.to_owned(), reason };
        // The URI the connector receives stays `http`, so that tonic (should its
        // own TLS be compiled in) never tries a handshake of its own; the origin
        // gives requests their real scheme.
        let uri: Uri = format!("http://{address}")
            .parse()
            .map_err(|error: http::uri::InvalidUri| invalid(error.to_string()))?;
        // Nothing but `host:port`: no user info, path or missing port.
        let rebuilt = uri.host().zip(uri.port_u16()).map(|(host, port)| format!("{host}:{port}"));
        if rebuilt.as_deref() != Some(address) {
            return Err(invalid("expected host:port".into()));
        }
        let endpoint = Endpoint::from(uri);
        if self.tls.is_none() {
            return Ok(endpoint);
        }
        let origin = format!("https://{address}")
            .parse()
            .map_err(|error: http::uri::InvalidUri| invalid(error.to_string()))?;
        Ok(endpoint.origin(origin))
    }

    /// Connects now: the TCP connection and TLS handshake complete (within the
    /// endpoint's `connect_timeout`, if set) before this returns.
    pub async fn connect(self, endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(self).await
    }

    /// A channel that connects on first use (and reconnects after failures).
    pub fn connect_lazy(self, endpoint: &Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self)
    }

    async fn dial(self, uri: Uri) -> io::Result<Stream> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in {uri}"));
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
        // The URI keeps IPv6 hosts in brackets; the resolver wants them bare.
        let host = host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host);
        let tcp = TcpStream::connect((host, port)).await?;
        // gRPC sends small frames (headers, window updates) that must not wait
        // for Nagle's algorithm.
        tcp.set_nodelay(true)?;
        match self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((connector, name)) => Ok(Stream::Tls(Box::new(connector.connect(name, tcp).await?))),
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.dial(uri).await.map(TokioIo::new) })
    }
}

/// A connection a [`Connector`] opened: plaintext or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The server's certificate chain, leaf first (`None` for plaintext).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => tls.get_ref().1.peer_certificates(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn endpoints_take_host_and_port_only() {
        let plain = Connector::plaintext();
        assert_eq!(plain.endpoint("127.0.0.1:8400").unwrap().uri().to_string(), "http://127.0.0.1:8400/");
        assert_eq!(plain.endpoint("[::1]:8400").unwrap().uri().to_string(), "http://[::1]:8400/");
        assert!(plain.endpoint("node-1.example:9000").is_ok());
        for bad in ["", "localhost", "host:port", "a:1/path", "user@host:1", "a b:1", "http://a:1"] {
            let error = plain.endpoint(bad).unwrap_err();
            assert!(matches!(error, Error::Address { .. }), "{bad:?}: {error:?}");
        }
    }

    #[test]
    fn a_server_name_must_be_a_dns_name_or_an_ip_address() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, proglog_certs::Ca::new("test CA").unwrap().cert_pem()).unwrap();
        let config = crate::client_config(&[ca], None, &[b"h2"]).unwrap();
        assert!(Connector::tls(Arc::clone(&config), "localhost").unwrap().is_tls());
        assert!(Connector::tls(Arc::clone(&config), "::1").is_ok());
        let error = Connector::tls(config, "not a name!").unwrap_err();
        assert!(matches!(error, Error::ServerName { .. }), "{error:?}");
    }
}
