//! Assembling and running the gRPC server: the log service, health and
//! reflection behind the admission and observation layers, served by a bounded
//! [`Listener`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use proglog_api::v1::log_server::LogServer;
use slog::Logger;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::admit::{AdmitLayer, ExtraRule};
use crate::auth::Authorizer;
use crate::listener::{Limits, Listener};
use crate::observe::{ObserveLayer, ObservedBody, RpcObserver};
use crate::service::LogService;
use crate::{ServerError, TlsFiles, status};
use proglog_raft::{Catalog, CommitLog, SingleLog};

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
    /// More tonic services on the same port (the agent's internal Raft
    /// service), each admitted with its own ACL action and message limit.
    /// Default none.
    pub extra_services: Vec<ExtraService>,
    /// A produce to a log that does not exist creates it with the default
    /// retention, for a caller the ACL allows `admin` on its name
    /// (`--auto-create-logs`, default true); otherwise `NOT_FOUND`.
    pub auto_create_logs: bool,
}

/// Services `serve` mounts itself: an extra service may not take their names.
const BUILT_IN_SERVICES: [&str; 4] = [
    "log.v1.Log",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A tonic service mounted by [`serve`] beside `log.v1.Log`, on the same port
/// and behind the same admission layer: every call to a path under
/// `/<name>/` (its [`NamedService::NAME`]) is authorized from its headers
/// for `action` on object `*` (denied: `PERMISSION_DENIED`, its body unread),
/// and its request messages are refused above `max_message_bytes`
/// (`INVALID_ARGUMENT`, from their 5-byte header). A unary request's whole
/// body must arrive within the body timeout; methods named in
/// [`ExtraService::streaming_requests`] get that bound per message instead.
///
/// The service is type-erased here, so a list of them can live in
/// [`ServerConfig`]. Set the service's own decoding limit
/// (`max_decoding_message_size`, 4 MiB by default in tonic) to at least
/// `max_message_bytes`, and size [`Limits`] for the largest message of any
/// service (`Limits::for_requests_of`).
#[derive(Clone)]
pub struct ExtraService {
    name: &'static str,
    action: &'static str,
    max_message_bytes: usize,
    streaming_requests: Vec<&'static str>,
    mount: Arc<dyn Fn(Routes) -> Routes + Send + Sync>,
}

impl std::fmt::Debug for ExtraService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraService")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("streaming_requests", &self.streaming_requests)
            .finish_non_exhaustive()
    }
}

impl ExtraService {
    /// `service` (a tonic-generated `...Server`), whose calls need `action`
    /// (e.g. [`crate::action::REPLICATE`]) and whose request messages may be
    /// up to `max_message_bytes` long. Every method's request is unary until
    /// [`ExtraService::streaming_requests`] says otherwise.
    pub fn new<S>(service: S, action: &'static str, max_message_bytes: usize) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self {
            name: S::NAME,
            action,
            max_message_bytes,
            streaming_requests: Vec::new(),
            mount: Arc::new(move |routes: Routes| routes.add_service(service.clone())),
        }
    }

    /// The methods (names only, e.g. `"InstallSnapshot"`) whose requests are
    /// client streams: their messages are bounded in time one at a time, once
    /// begun, rather than the whole body.
    pub fn streaming_requests(mut self, methods: &[&'static str]) -> Self {
        self.streaming_requests = methods.to_vec();
        self
    }

    /// The gRPC service name (`pkg.Service`): calls go to `/pkg.Service/Method`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn rule(&self) -> ExtraRule {
        ExtraRule {
            name: self.name,
            action: self.action,
            max_message_bytes: self.max_message_bytes,
            streaming_requests: self.streaming_requests.clone(),
        }
    }
}

/// Rejects extra services that could not be mounted or admitted: a name
/// taken by a built-in or another extra service (routes would collide), no
/// action, or no room for a message.
fn check_extra_services(extras: &[ExtraService]) -> Result<(), ServerError> {
    for (index, extra) in extras.iter().enumerate() {
        let invalid = |why: &str| Err(ServerError::Config(format!("extra service {}: {why}", extra.name)));
        if BUILT_IN_SERVICES.contains(&extra.name)
            || extras[..index].iter().any(|other| other.name == extra.name)
        {
            return invalid("its name is already served");
        }
        if extra.action.is_empty() {
            return invalid("needs an ACL action");
        }
        if extra.max_message_bytes == 0 {
            return invalid("max_message_bytes must be positive");
        }
    }
    Ok(())
}

impl Default for ServerConfig {
    fn default() -> Self {
        let max_record_bytes = proglog_raft::Settings::default().max_record_bytes;
        Self {
            tls: None,
            max_record_bytes,
            limits: Limits::for_requests_of(max_record_bytes as usize),
            observer: None,
            logger: Logger::root(slog::Discard, slog::o!()),
            extra_services: Vec::new(),
            auto_create_logs: true,
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
/// `"log.v1.Log"`), server reflection (v1 and v1alpha) and the config's
/// [`ExtraService`]s. Every call is admitted (authorized, its body bounded)
/// before its body is read.
pub async fn serve(
    listener: TcpListener,
    log: Arc<dyn CommitLog>,
    authorizer: Arc<dyn Authorizer>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve_logs(listener, Arc::new(SingleLog(log)), authorizer, config, shutdown).await
}

/// [`serve`] for every log of `logs` (SPEC §11): each call acts on the log
/// its `proglog-log` metadata names; CreateLog, DeleteLog and ListLogs manage
/// them. The default log's failure is the server's.
pub async fn serve_logs(
    listener: TcpListener,
    logs: Arc<dyn Catalog>,
    authorizer: Arc<dyn Authorizer>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let log = logs.get("").map_err(|error| ServerError::Config(error.to_string()))?;
    if config.max_record_bytes == 0 {
        return Err(ServerError::Config("max-record-bytes must be positive".into()));
    }
    config.limits.validate().map_err(ServerError::Config)?;
    check_extra_services(&config.extra_services)?;
    let tls = config.tls.as_ref().map(|tls| tls.server_config(&[b"h2"])).transpose()?;
    let observer = config.observer.unwrap_or_else(|| RpcObserver::new(config.logger.clone(), None));
    let extra_rules = config.extra_services.iter().map(ExtraService::rule).collect();
    let admit = AdmitLayer::new(Arc::clone(&authorizer), config.max_record_bytes, extra_rules);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut failure = log.failure();
    let mut failure_stop = stop_rx.clone();
    let service =
        LogService::new(logs, authorizer, config.auto_create_logs, config.max_record_bytes, stop_rx);
    let service = LogServer::new(service)
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
        .add_service(reflection_alpha);
    let routes = config.extra_services.iter().fold(routes, |routes, extra| (extra.mount)(routes)).prepare();
    let service =
        tower::ServiceBuilder::new().layer(ObserveLayer::new(observer)).layer(admit).service(routes);

    // A log that stopped for good is reported at once: health checks see
    // NOT_SERVING (both names), rather than a live process that cannot append.
    let failure_health = health.clone();
    tokio::spawn(async move {
        let failed = tokio::select! {
            failed = failure.wait_for(Option::is_some) => failed.is_ok(),
            _ = failure_stop.wait_for(|stop| *stop) => false,
        };
        if failed {
            failure_health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            failure_health.set_not_serving::<LogServer<LogService>>().await;
        }
    });
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
