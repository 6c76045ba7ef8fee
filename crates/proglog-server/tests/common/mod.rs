//! In-process servers on 127.0.0.1:0 with freshly minted certificates.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test files

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proglog_api::v1::log_client::LogClient;
use proglog_certs::{Ca, CertifiedKey};
use proglog_raft::{Fsync, LocalLog};
use proglog_server::{Acl, AllowAll, Authorizer, ServerConfig, ServerError, TlsFiles};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const MODEL: &str = "[request_definition]\nr = sub, obj, act\n\n[policy_definition]\np = sub, obj, act\n\n\
    [policy_effect]\ne = some(where (p.eft == allow))\n\n[matchers]\n\
    m = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n";
pub const POLICY: &str = "p, root, *, produce\np, root, *, consume\n";

/// A CA, its server certificate and client certificates, written to a temp dir.
pub struct Pki {
    pub ca: Ca,
    pub dir: tempfile::TempDir,
    pub server: CertifiedKey,
}

impl Pki {
    pub fn new() -> Self {
        let ca = Ca::new("proglog test CA").unwrap();
        let server = ca.server_cert(&["localhost", "127.0.0.1"]).unwrap();
        Self { ca, dir: tempfile::tempdir().unwrap(), server }
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn tls_files(&self, mutual: bool) -> TlsFiles {
        TlsFiles {
            cert_file: self.write("server.pem", &self.server.cert_pem),
            key_file: self.write("server-key.pem", &self.server.key_pem),
            ca_files: if mutual { vec![self.write("ca.pem", &self.ca.cert_pem())] } else { Vec::new() },
        }
    }

    pub async fn acl(&self) -> Acl {
        Acl::from_files(&self.write("model.conf", MODEL), &self.write("policy.csv", POLICY)).await.unwrap()
    }
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub log: Arc<LocalLog>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    _data: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(tls: Option<TlsFiles>, authorizer: Arc<dyn Authorizer>, fsync: Fsync) -> Self {
        Self::start_with(ServerConfig { tls, ..ServerConfig::default() }, authorizer, fsync).await
    }

    pub async fn start_with(config: ServerConfig, authorizer: Arc<dyn Authorizer>, fsync: Fsync) -> Self {
        let data = tempfile::tempdir().unwrap();
        let log = proglog_log::Log::open(data.path(), proglog_log::Config::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(LocalLog::new(log, fsync, "test-node", addr.to_string()).unwrap());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(proglog_server::serve(listener, log.clone(), authorizer, config, async {
            let _ = stopped.await;
        }));
        Self { addr, log, stop: Some(stop), task: Some(task), _data: data }
    }

    /// mTLS + the book's ACL (root may produce and consume).
    pub async fn secure(pki: &Pki) -> Self {
        Self::start(Some(pki.tls_files(true)), Arc::new(pki.acl().await), Fsync::Always).await
    }

    pub async fn plaintext() -> Self {
        Self::start(None, Arc::new(AllowAll), Fsync::Never).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.log.close().unwrap();
    }
}

pub async fn plaintext_client(addr: std::net::SocketAddr) -> LogClient<Channel> {
    LogClient::connect(format!("http://{addr}")).await.unwrap()
}

/// A channel (connecting on first use) over TLS to `addr`, trusting the
/// server's CA and presenting `identity` if given.
pub fn tls_channel(pki: &Pki, addr: std::net::SocketAddr, identity: Option<&CertifiedKey>) -> Channel {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let ca = pki.write("client-ca.pem", &pki.ca.cert_pem());
    let identity = identity.map(|key| {
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        proglog_tls::Identity::new(
            pki.write(&format!("client-{n}.pem"), &key.cert_pem),
            pki.write(&format!("client-{n}-key.pem"), &key.key_pem),
        )
    });
    let config = proglog_tls::client_config(&[ca], identity.as_ref(), &[b"h2"]).unwrap();
    let connector = proglog_tls::Connector::tls(config, "localhost").unwrap();
    let endpoint = connector.endpoint(&addr.to_string()).unwrap();
    connector.connect_lazy(&endpoint)
}

/// A client with a certificate for `common_name` from the server's CA.
pub fn client_as(pki: &Pki, addr: std::net::SocketAddr, common_name: &str) -> LogClient<Channel> {
    let identity = pki.ca.client_cert(common_name).unwrap();
    LogClient::new(tls_channel(pki, addr, Some(&identity)))
}
