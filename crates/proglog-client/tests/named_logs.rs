//! Named logs against fake `log.v1` servers that record every call: a named
//! log's client names its log (metadata `proglog-log`) on every call and sends
//! what needs a leader to that log's leader, the default log's client names
//! none, and the admin calls name their log in the body.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use proglog_api::v1::log_server::Log;
use proglog_api::v1::{
    CommitOffsetRequest, CommitOffsetResponse, ConsumeRequest, ConsumeResponse, CreateLogRequest,
    CreateLogResponse, DeleteLogRequest, DeleteLogResponse, FetchOffsetRequest, FetchOffsetResponse,
    GetOffsetsRequest, GetOffsetsResponse, GetServersRequest, GetServersResponse, InitProducerRequest,
    InitProducerResponse, ListLogsRequest, ListLogsResponse, LogInfo, ProduceRequest, ProduceResponse,
    Record, Server,
};
use proglog_client::{Client, Error, LOG_METADATA_KEY, LogOptions, Options};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

/// One call a fake server received.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    server: usize,
    method: &'static str,
    /// Its `proglog-log` metadata, if any.
    log: Option<String>,
}

/// One log of the fake cluster.
#[derive(Debug, Default)]
struct FakeLog {
    leader: usize,
    records: Vec<Bytes>,
    groups: HashMap<String, u64>,
    retention_bytes: u64,
    retention_ms: u64,
}

/// Three servers' shared state: the logs (the default one named ""), where
/// each leads, and every call received.
#[derive(Debug, Default)]
struct Cluster {
    addrs: Vec<String>,
    logs: BTreeMap<String, FakeLog>,
    /// Where a log created by a first produce gets its leader.
    created_leader: usize,
    auto_create: bool,
    calls: Vec<Call>,
    next_producer: u64,
}

type Shared = Arc<Mutex<Cluster>>;

impl Cluster {
    /// The log a call on `log` acts on, created if `create` (a produce) and the
    /// cluster creates logs so.
    fn log(&mut self, log: &str, create: bool) -> Result<&mut FakeLog, Status> {
        if create && self.auto_create && !self.logs.contains_key(log) {
            let leader = self.created_leader;
            self.logs.insert(log.to_owned(), FakeLog { leader, ..FakeLog::default() });
        }
        self.logs.get_mut(log).ok_or_else(|| Status::not_found(format!("no log named '{log}'")))
    }

    /// The log a call that needs its leader acts on, if `server` leads it.
    fn led(&mut self, server: usize, log: &str, create: bool) -> Result<&mut FakeLog, Status> {
        let fake_log = self.log(log, create)?;
        if fake_log.leader == server {
            return Ok(fake_log);
        }
        let details = ErrorDetails::with_error_info("NOT_LEADER", "proglog", HashMap::new());
        Err(Status::with_error_details(Code::Unavailable, "not the leader", details))
    }

    fn calls_of(&self, log: Option<&str>) -> Vec<&Call> {
        self.calls.iter().filter(|call| call.log.as_deref() == log).collect()
    }
}

struct Fake {
    number: usize,
    cluster: Shared,
}

impl Fake {
    /// Notes the call; the name of the log it acts on ("" without metadata).
    fn note<T>(&self, method: &'static str, request: &Request<T>) -> String {
        let log = request.metadata().get(LOG_METADATA_KEY).map(|value| value.to_str().unwrap().to_owned());
        let call = Call { server: self.number, method, log: log.clone() };
        self.cluster.lock().unwrap().calls.push(call);
        log.unwrap_or_default()
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Log for Fake {
    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        let log = self.note("Produce", &request);
        let mut cluster = self.cluster.lock().unwrap();
        let fake_log = cluster.led(self.number, &log, true)?;
        fake_log.records.push(request.into_inner().record.unwrap().value);
        Ok(Response::new(ProduceResponse { offset: fake_log.records.len() as u64 - 1 }))
    }

    async fn consume(&self, request: Request<ConsumeRequest>) -> Result<Response<ConsumeResponse>, Status> {
        let log = self.note("Consume", &request);
        let mut cluster = self.cluster.lock().unwrap();
        let offset = request.get_ref().offset;
        let value = cluster.log(&log, false)?.records.get(offset as usize).cloned();
        let value = value.ok_or_else(|| Status::out_of_range(format!("offset out of range: {offset}")))?;
        Ok(Response::new(ConsumeResponse { record: Some(Record { value, offset, ..Record::default() }) }))
    }

    type ConsumeStreamStream = Boxed<ConsumeResponse>;

    /// The records from the offset on, then nothing (the tail, forever).
    async fn consume_stream(
        &self,
        request: Request<ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
        let log = self.note("ConsumeStream", &request);
        let mut cluster = self.cluster.lock().unwrap();
        let from = request.get_ref().offset;
        let records = cluster.log(&log, false)?.records.clone();
        let responses: Vec<Result<ConsumeResponse, Status>> = (from..records.len() as u64)
            .map(|offset| {
                let value = records[offset as usize].clone();
                Ok(ConsumeResponse { record: Some(Record { value, offset, ..Record::default() }) })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(responses).chain(tokio_stream::pending()))))
    }

    type ProduceStreamStream = Boxed<ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let log = self.note("ProduceStream", &request);
        self.cluster.lock().unwrap().led(self.number, &log, true)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (cluster, number) = (Arc::clone(&self.cluster), self.number);
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let answer = {
                    let mut cluster = cluster.lock().unwrap();
                    cluster.led(number, &log, true).map(|fake_log| {
                        fake_log.records.push(request.record.unwrap().value);
                        ProduceResponse { offset: fake_log.records.len() as u64 - 1 }
                    })
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_servers(
        &self,
        request: Request<GetServersRequest>,
    ) -> Result<Response<GetServersResponse>, Status> {
        let log = self.note("GetServers", &request);
        let mut cluster = self.cluster.lock().unwrap();
        let leader = cluster.log(&log, false)?.leader;
        let servers = (cluster.addrs.iter().enumerate())
            .map(|(i, addr)| Server { id: format!("s{i}"), rpc_addr: addr.clone(), is_leader: i == leader })
            .collect();
        Ok(Response::new(GetServersResponse { servers }))
    }

    async fn get_offsets(
        &self,
        request: Request<GetOffsetsRequest>,
    ) -> Result<Response<GetOffsetsResponse>, Status> {
        let log = self.note("GetOffsets", &request);
        let mut cluster = self.cluster.lock().unwrap();
        let next = cluster.log(&log, false)?.records.len() as u64;
        Ok(Response::new(GetOffsetsResponse { lowest: 0, next }))
    }

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        let log = self.note("InitProducer", &request);
        let mut cluster = self.cluster.lock().unwrap();
        cluster.led(self.number, &log, true)?;
        cluster.next_producer += 1;
        Ok(Response::new(InitProducerResponse { producer_id: cluster.next_producer }))
    }

    async fn commit_offset(
        &self,
        request: Request<CommitOffsetRequest>,
    ) -> Result<Response<CommitOffsetResponse>, Status> {
        let log = self.note("CommitOffset", &request);
        let mut cluster = self.cluster.lock().unwrap();
        let CommitOffsetRequest { group, offset } = request.into_inner();
        cluster.led(self.number, &log, false)?.groups.insert(group, offset);
        Ok(Response::new(CommitOffsetResponse {}))
    }

    async fn fetch_offset(
        &self,
        request: Request<FetchOffsetRequest>,
    ) -> Result<Response<FetchOffsetResponse>, Status> {
        let log = self.note("FetchOffset", &request);
        let mut cluster = self.cluster.lock().unwrap();
        let position = cluster.log(&log, false)?.groups.get(&request.get_ref().group).copied();
        Ok(Response::new(FetchOffsetResponse { offset: position.unwrap_or(0), found: position.is_some() }))
    }

    async fn create_log(
        &self,
        request: Request<CreateLogRequest>,
    ) -> Result<Response<CreateLogResponse>, Status> {
        self.note("CreateLog", &request);
        let CreateLogRequest { name, retention_bytes, retention_ms } = request.into_inner();
        let mut cluster = self.cluster.lock().unwrap();
        if cluster.logs.contains_key(&name) {
            return Err(Status::already_exists(format!("log '{name}' exists")));
        }
        let leader = cluster.created_leader;
        cluster.logs.insert(name, FakeLog { leader, retention_bytes, retention_ms, ..FakeLog::default() });
        Ok(Response::new(CreateLogResponse {}))
    }

    async fn delete_log(
        &self,
        request: Request<DeleteLogRequest>,
    ) -> Result<Response<DeleteLogResponse>, Status> {
        self.note("DeleteLog", &request);
        let name = request.into_inner().name;
        match self.cluster.lock().unwrap().logs.remove(&name) {
            Some(_) => Ok(Response::new(DeleteLogResponse {})),
            None => Err(Status::not_found(format!("no log named '{name}'"))),
        }
    }

    async fn list_logs(
        &self,
        request: Request<ListLogsRequest>,
    ) -> Result<Response<ListLogsResponse>, Status> {
        self.note("ListLogs", &request);
        let cluster = self.cluster.lock().unwrap();
        let logs = (cluster.logs.iter())
            .map(|(name, log)| LogInfo {
                name: name.clone(),
                lowest: 0,
                next: log.records.len() as u64,
                retention_bytes: log.retention_bytes,
                retention_ms: log.retention_ms,
                bytes: log.records.iter().map(|value| value.len() as u64).sum(),
            })
            .collect();
        Ok(Response::new(ListLogsResponse { logs }))
    }
}

/// Three fake servers; the default log led by s0, `orders` by s2. The client
/// knows s1 only, as its seed, and refreshes only when something fails.
async fn cluster() -> (Shared, Client) {
    let shared = Shared::default();
    for number in 0..3 {
        let addr = common::serve(Fake { number, cluster: Arc::clone(&shared) }).await;
        shared.lock().unwrap().addrs.push(addr);
    }
    let seed = {
        let mut cluster = shared.lock().unwrap();
        cluster.logs.insert(String::new(), FakeLog { leader: 0, ..FakeLog::default() });
        cluster.logs.insert("orders".into(), FakeLog { leader: 2, ..FakeLog::default() });
        (cluster.created_leader, cluster.auto_create) = (1, true);
        cluster.addrs[1].clone()
    };
    let options = Options {
        refresh_interval: Duration::from_secs(3600),
        failover_timeout: Duration::from_secs(2),
        ..Options::default()
    };
    let client = Client::connect(&format!("proglog://{seed}"), options).await.unwrap();
    (shared, client)
}

fn text(record: &Record) -> &str {
    std::str::from_utf8(&record.value).unwrap()
}

/// The methods of `calls` sent to `server`.
fn methods_at(calls: &[&Call], server: usize) -> HashSet<&'static str> {
    calls.iter().filter(|call| call.server == server).map(|call| call.method).collect()
}

#[tokio::test]
async fn every_call_of_a_named_log_names_it_and_goes_to_its_leader() {
    let (shared, client) = cluster().await;
    let orders = client.log("orders").unwrap();
    assert_eq!((orders.log_name(), client.log_name()), ("orders", ""));

    assert_eq!(orders.produce("a").await.unwrap(), 0);
    let offsets: Vec<u64> = orders.produce_many(["b", "c"]).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(offsets, [1, 2]);
    assert_eq!(text(&orders.consume(0).await.unwrap()), "a");
    assert_eq!(text(&orders.consume_linearizable(1).await.unwrap()), "b");
    assert_eq!(orders.offsets().await.unwrap().next, 3);
    let leaders: Vec<String> =
        orders.servers().await.unwrap().into_iter().filter(|s| s.is_leader).map(|s| s.id).collect();
    assert_eq!(leaders, ["s2"], "the servers of orders, with its own leader");
    let mut subscription = orders.subscribe(1);
    assert_eq!(text(&subscription.next().await.unwrap()), "b");
    orders.commit_offset("billing", 2).await.unwrap();
    assert_eq!(orders.fetch_offset("billing").await.unwrap(), Some(2));
    let mut group = orders.subscribe_group("billing").await.unwrap();
    assert_eq!(text(&group.next().await.unwrap()), "c");
    group.commit().await.unwrap();

    // The default log's client, alongside: its own leader, no metadata.
    assert_eq!(client.produce("x").await.unwrap(), 0);
    assert_eq!(text(&client.consume(0).await.unwrap()), "x");
    assert_eq!(client.offsets().await.unwrap().next, 1);
    assert_eq!(client.fetch_offset("billing").await.unwrap(), None, "positions are per log");
    // Another client of orders shares its view (and what it learned).
    assert_eq!(client.log("orders").unwrap().produce("d").await.unwrap(), 3);

    let cluster = shared.lock().unwrap();
    assert_eq!(cluster.logs["orders"].records, ["a", "b", "c", "d"]);
    assert_eq!(cluster.logs[""].records, ["x"]);
    assert_eq!(cluster.logs["orders"].groups["billing"], 3);
    let named = cluster.calls_of(Some("orders"));
    let default = cluster.calls_of(None);
    assert_eq!(named.len() + default.len(), cluster.calls.len(), "no other log named: {:?}", cluster.calls);
    let methods: HashSet<&str> = named.iter().map(|call| call.method).collect();
    let every = [
        "GetServers",
        "InitProducer",
        "Produce",
        "ProduceStream",
        "Consume",
        "ConsumeStream",
        "GetOffsets",
        "CommitOffset",
        "FetchOffset",
    ];
    assert_eq!(methods, HashSet::from(every), "the calls of orders");
    // What needs the leader went to the log's own: never refused as not the
    // leader on the way (the fake refuses, and the client would resend).
    let leader_calls = HashSet::from(["InitProducer", "Produce", "ProduceStream", "CommitOffset"]);
    assert_eq!(methods_at(&named, 2).intersection(&leader_calls).count(), 4, "{named:?}");
    for server in [0, 1] {
        assert!(methods_at(&named, server).is_disjoint(&leader_calls), "s{server} got {named:?}");
        assert!(methods_at(&default, server + 1).is_disjoint(&leader_calls), "{default:?}");
    }
    // Reads went to the followers of orders (s0, s1), not to its leader.
    assert!(!methods_at(&named, 2).contains("Consume") && !methods_at(&named, 2).contains("ConsumeStream"));
}

#[tokio::test]
async fn admin_calls_name_their_log_in_the_body_and_say_what_failed() {
    let (shared, client) = cluster().await;
    let orders = client.log("orders").unwrap();
    let week = LogOptions { retention_bytes: 1 << 20, retention_ms: 7 * 24 * 3600 * 1000 };
    // On any log's client: the same cluster-wide call.
    orders.create_log("events", week).await.unwrap();
    let exists = client.create_log("events", LogOptions::default()).await.unwrap_err();
    assert!(matches!(&exists, Error::LogExists { name, .. } if name == "events"), "{exists:?}");
    assert_eq!(exists.to_string(), "log 'events' already exists");
    assert_eq!(exists.status().map(tonic::Status::code), Some(Code::AlreadyExists));

    let logs = client.list_logs().await.unwrap();
    let names: Vec<&str> = logs.iter().map(|log| log.name.as_str()).collect();
    assert_eq!(names, ["", "events", "orders"]);
    assert_eq!((logs[1].retention_bytes, logs[1].retention_ms), (week.retention_bytes, week.retention_ms));

    client.delete_log("events").await.unwrap();
    let missing = orders.delete_log("events").await.unwrap_err();
    assert!(matches!(&missing, Error::LogNotFound { name, .. } if name == "events"), "{missing:?}");
    assert_eq!(missing.to_string(), "log 'events' does not exist");
    assert_eq!(client.list_logs().await.unwrap().len(), 2);

    let calls_before = shared.lock().unwrap().calls.len();
    for error in [
        client.create_log("Events", LogOptions::default()).await.unwrap_err(),
        client.delete_log("").await.unwrap_err(),
        client.log("no/such").unwrap_err(),
    ] {
        assert!(matches!(error, Error::InvalidLogName { .. }), "{error:?}");
    }
    let cluster = shared.lock().unwrap();
    assert_eq!(cluster.calls.len(), calls_before, "a bad name is refused before anything is sent");
    let admin: Vec<&Call> = cluster
        .calls
        .iter()
        .filter(|call| call.method.ends_with("Log") || call.method == "ListLogs")
        .collect();
    assert_eq!(admin.len(), 6);
    for call in admin {
        assert_eq!(
            (call.server, &call.log),
            (0, &None),
            "to the default log's leader, no metadata: {call:?}"
        );
    }
}

#[tokio::test]
async fn a_log_the_cluster_does_not_hold_is_created_by_a_produce_or_reported() {
    let (shared, client) = cluster().await;
    // GetServers of `fresh` is NOT_FOUND: the produce goes to the default
    // log's leader, which creates the log (led by s1); then to s1.
    let fresh = client.log("fresh").unwrap();
    assert_eq!(fresh.produce("first").await.unwrap(), 0);
    assert_eq!(fresh.produce("second").await.unwrap(), 1);
    {
        let cluster = shared.lock().unwrap();
        assert_eq!(cluster.logs["fresh"].records, ["first", "second"]);
        let produced: Vec<usize> = (cluster.calls_of(Some("fresh")).iter())
            .filter(|call| call.method == "Produce")
            .map(|call| call.server)
            .collect();
        assert_eq!(produced, [1, 1], "to the new log's leader");
    }

    shared.lock().unwrap().auto_create = false;
    let absent = client.log("absent").unwrap();
    let error = absent.produce("x").await.unwrap_err();
    assert!(matches!(&error, Error::LogNotFound { name, .. } if name == "absent"), "{error:?}");
    assert_eq!(error.to_string(), "log 'absent' does not exist");
    for error in [
        absent.consume(0).await.unwrap_err(),
        absent.offsets().await.unwrap_err(),
        absent.servers().await.unwrap_err(),
        absent.subscribe(0).next().await.unwrap_err(),
    ] {
        assert!(matches!(&error, Error::LogNotFound { name, .. } if name == "absent"), "{error:?}");
    }
    assert!(!shared.lock().unwrap().logs.contains_key("absent"));
    // The default log's client never says a log is missing: "" is the default log.
    assert_eq!(client.log("").unwrap().produce("y").await.unwrap(), 0);
}
