//! What the client tests' fake servers share.

use proglog_api::v1::log_server::{Log, LogServer};

/// Serves `fake` on a fresh loopback port for the rest of the test; its address.
pub async fn serve<S: Log>(fake: S) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}
