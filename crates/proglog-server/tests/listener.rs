//! The `Listener` in process, with short limits: who is closed when, who is
//! refused, and what shutdown waits for. Raw sockets and a raw HTTP/2 client, so
//! that nothing retries or reconnects behind the test's back.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use proglog_server::{Limits, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

/// Longest any expectation below may take to come true.
const DEADLINE: Duration = Duration::from_secs(5);

fn overloaded(message: String) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response
}

struct Served {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    /// Notified when a call to `/hold` has started.
    started: Arc<Notify>,
    /// Calls to `/hold` wait until this is notified.
    release: Arc<Notify>,
}

/// A listener answering `200 ok`, except `/hold`, which answers once released.
async fn serve(limits: Limits, http1: bool) -> Served {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (on_start, held) = (Arc::clone(&started), Arc::clone(&release));
    let service = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let (on_start, held) = (Arc::clone(&on_start), Arc::clone(&held));
        async move {
            if request.uri().path() == "/hold" {
                on_start.notify_one();
                held.notified().await;
            }
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let listener = Listener { name: "test", tcp, tls: None, limits, http1, refusal: b"refused", overloaded };
    let (stop, stopped) = oneshot::channel::<()>();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let task = tokio::spawn(listener.serve(
        service,
        async {
            let _ = stopped.await;
        },
        logger,
    ));
    Served { addr, stop: Some(stop), task, started, release }
}

/// Resolves when the server closes `stream` (EOF or reset), failing after the
/// deadline; returns what it sent before.
async fn closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&chunk[..read]),
            }
        }
    });
    read.await.expect("the server closed the connection");
    received
}

/// A raw HTTP/2 connection whose driver runs in the background.
async fn h2_client(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let (send, connection) = h2::client::handshake(TcpStream::connect(addr).await.unwrap()).await.unwrap();
    (send, tokio::spawn(async move { connection.await.unwrap_or_default() }))
}

async fn get(send: &h2::client::SendRequest<Bytes>, addr: SocketAddr, path: &str) -> http::StatusCode {
    let request = http::Request::get(format!("http://{addr}{path}")).body(()).unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (response, _) = ready.send_request(request, true).unwrap();
    response.await.unwrap().status()
}

fn limits() -> Limits {
    Limits {
        first_request_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed_after_the_first_request_timeout() {
    let served = serve(limits(), false).await;
    let mut silent = TcpStream::connect(served.addr).await.unwrap();
    closed(&mut silent).await;
    // One that trickles an HTTP/1 request line never completes its headers.
    let served = serve(limits(), true).await;
    let mut trickling = TcpStream::connect(served.addr).await.unwrap();
    trickling.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    closed(&mut trickling).await;
}

#[tokio::test]
async fn an_idle_connection_is_told_to_go_away_after_the_idle_timeout() {
    let served = serve(Limits { first_request_timeout: DEADLINE, ..limits() }, false).await;
    let (send, connection) = h2_client(served.addr).await;
    assert_eq!(get(&send, served.addr, "/").await, http::StatusCode::OK);
    tokio::time::timeout(DEADLINE, connection).await.expect("closed after the idle timeout").unwrap();
}

#[tokio::test]
async fn at_the_cap_a_new_connection_displaces_one_that_sent_nothing() {
    let served =
        serve(Limits { max_connections: 2, first_request_timeout: DEADLINE, ..limits() }, false).await;
    let mut oldest = TcpStream::connect(served.addr).await.unwrap();
    let (send, _connection) = h2_client(served.addr).await;
    assert_eq!(get(&send, served.addr, "/").await, http::StatusCode::OK);
    // A third connection takes the slot of the one that never sent a request.
    let (third, _third_connection) = h2_client(served.addr).await;
    assert_eq!(get(&third, served.addr, "/").await, http::StatusCode::OK);
    closed(&mut oldest).await;
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused() {
    let served =
        serve(Limits { max_connections: 1, first_request_timeout: DEADLINE, ..limits() }, false).await;
    let (send, _connection) = h2_client(served.addr).await;
    let busy = tokio::spawn({
        let (send, addr) = (send.clone(), served.addr);
        async move { get(&send, addr, "/hold").await }
    });
    served.started.notified().await;
    let mut refused = TcpStream::connect(served.addr).await.unwrap();
    assert_eq!(closed(&mut refused).await, b"refused");
    served.release.notify_one();
    assert_eq!(busy.await.unwrap(), http::StatusCode::OK);
}

#[tokio::test]
async fn calls_over_the_limit_are_answered_overloaded() {
    let served = serve(Limits { max_concurrent_calls: 1, ..limits() }, false).await;
    let (send, _connection) = h2_client(served.addr).await;
    let busy = tokio::spawn({
        let (send, addr) = (send.clone(), served.addr);
        async move { get(&send, addr, "/hold").await }
    });
    served.started.notified().await;
    assert_eq!(get(&send, served.addr, "/").await, http::StatusCode::SERVICE_UNAVAILABLE);
    served.release.notify_one();
    assert_eq!(busy.await.unwrap(), http::StatusCode::OK);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_waits_for_calls_in_progress() {
    let mut served =
        serve(Limits { first_request_timeout: DEADLINE, idle_timeout: DEADLINE * 10, ..limits() }, false)
            .await;
    let (idle, idle_connection) = h2_client(served.addr).await;
    assert_eq!(get(&idle, served.addr, "/").await, http::StatusCode::OK);
    let (send, _connection) = h2_client(served.addr).await;
    let busy = tokio::spawn({
        let (send, addr) = (send.clone(), served.addr);
        async move { get(&send, addr, "/hold").await }
    });
    let mut silent = TcpStream::connect(served.addr).await.unwrap();
    served.started.notified().await;
    let _ = served.stop.take().unwrap().send(());
    closed(&mut silent).await;
    tokio::time::timeout(DEADLINE, idle_connection).await.expect("the idle connection closes").unwrap();
    assert!(!served.task.is_finished(), "a call is still in progress");
    served.release.notify_one();
    assert_eq!(busy.await.unwrap(), http::StatusCode::OK);
    tokio::time::timeout(DEADLINE, served.task).await.expect("serve returns once the call is done").unwrap();
}
