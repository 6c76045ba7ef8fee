//! Assembling and running the gRPC server: the log service, health and
//! reflection behind the admission and observation layers, served by a bounded
//! [`Listener`].

use std::future::Future;
use std::sync::Arc;

use proglog_api::v1::log_server::LogServer;
use slog::Logger;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;

use crate::admit::AdmitLayer;
use crate::auth::Authorizer;
use crate::listener::{Limits, Listener};
use crate::observe::{ObserveLayer, ObservedBody, RpcObserver};
use crate::service::LogService;
use crate::{ServerError, TlsFiles, status};
use proglog_raft::CommitLog;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// TLS, or plaintext when `None`.
    pub tls: Option<TlsFiles>,
    /// Largest record value accepted (`max-record-bytes`).
    pub max_record_bytes: u64,
    /// Bounds on connections, calls, request bytes and time.
    pub limits: Limits,
    /// Where each call is logged and counted; `None` observes nothing.
    pub observer: Option<RpcObserver>,
    /// Where the listener reports attacks and failures (at bounded rates).
    pub logger: Logger,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let max_record_bytes = 1 << 20;
        Self {
            tls: None,
            max_record_bytes,
            limits: Limits::for_requests_of(max_record_bytes as usize),
            observer: None,
            logger: Logger::root(slog::Discard, slog::o!()),
        }
    }
}

/// Written to a plaintext connection refused at the connection cap: the HTTP/2
/// server preface (an empty SETTINGS frame), then GOAWAY (last stream 0,
/// ENHANCE_YOUR_CALM) with a reason a client can show.
const REFUSAL: &[u8] = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\
    \x00\x00\x20\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0bconnection limit reached";

fn overloaded(message: String) -> http::Response<ObservedBody<tonic::body::Body>> {
    status::overloaded(message).into_http::<tonic::body::Body>().map(ObservedBody::unobserved)
}

/// Serves `log` on `listener` until `shutdown` resolves: then stops accepting,
/// ends the open streams, lets calls in progress finish and returns once every
/// connection is closed (drop the future to close them at once).
///
/// Registers `log.v1.Log`, `grpc.health.v1.Health` (serving for `""` and
/// `"log.v1.Log"`) and server reflection (v1 and v1alpha). Every call is admitted
/// (authorized, its body bounded) before its body is read.
pub async fn serve(
    listener: TcpListener,
    log: Arc<dyn CommitLog>,
    authorizer: Arc<dyn Authorizer>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    if config.max_record_bytes == 0 {
        return Err(ServerError::Config("max-record-bytes must be positive".into()));
    }
    config.limits.validate().map_err(ServerError::Config)?;
    let tls = config.tls.as_ref().map(|tls| tls.server_config(&[b"h2"])).transpose()?;
    let observer = config.observer.unwrap_or_else(|| RpcObserver::new(config.logger.clone(), None));
    let admit = AdmitLayer::new(authorizer, config.max_record_bytes);
    let (stop_tx, stop_rx) = watch::channel(false);
    let service = LogServer::new(LogService::new(log, config.max_record_bytes, stop_rx))
        // A backstop: the admission layer refuses larger messages first.
        .max_decoding_message_size(admit.max_message_bytes());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    health.set_serving::<LogServer<LogService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proglog_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proglog_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let routes = Routes::new(service)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .prepare();
    let service =
        tower::ServiceBuilder::new().layer(ObserveLayer::new(observer)).layer(admit).service(routes);

    let stopping = async move {
        shutdown.await;
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let _ = stop_tx.send(true);
    };
    let listener = Listener {
        name: "rpc",
        tcp: listener,
        tls,
        limits: config.limits,
        http1: false,
        refusal: REFUSAL,
        overloaded,
    };
    listener.serve(service, stopping, config.logger).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_settings_frame_then_a_well_formed_goaway() {
        let (settings, goaway) = REFUSAL.split_at(9);
        assert_eq!(settings, [0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let length = u32::from_be_bytes([0, goaway[0], goaway[1], goaway[2]]) as usize;
        assert_eq!((goaway[3], length), (7, goaway.len() - 9), "GOAWAY and its payload length");
        assert_eq!(goaway[9..17], [0, 0, 0, 0, 0, 0, 0, 0x0b], "last stream 0, ENHANCE_YOUR_CALM");
    }
}
