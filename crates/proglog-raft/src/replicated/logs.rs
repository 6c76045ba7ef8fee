//! Named logs (SPEC §11): one Raft group per log, all hosted by [`Logs`].
//!
//! The default log's group carries the catalog: `CreateLog` and `DeleteLog`
//! commands, applied by every node in the same order, give each named log an
//! incarnation (the index of the entry that created it) and the voters its
//! group starts with (the default group's voters when the leader proposed it).
//! Each node opens the groups the catalog names, under
//! `<data dir>/logs/<name>@<incarnation>/` (`raft/` and `log/`, as the default
//! log's), and closes and removes the others: deleting a log frees its disk,
//! on every node. A named group's leader keeps its membership that of the
//! default group (nodes joining or leaving the cluster join or leave every
//! log).
//!
//! Architecture invariant: every message, fetch, forwarded append or command
//! between nodes names its group ([`GroupId`]: name and incarnation), and a
//! transport hands it only to that group's node on the receiving side; nothing
//! meant for a deleted log reaches a log created again under its name.
//!
//! Bounds: at most [`MAX_LOGS`](super::MAX_LOGS) named logs; every group of a
//! process shares the default log's byte budgets for what peers and clients
//! fill ([`Budgets`](super::Budgets)), and a named group holds at most 8 MiB
//! of uncommitted entries and 1 MiB of cached ones of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use slog::Logger;
use tokio::sync::watch;

use super::codec::{ClusterId, Member};
use super::machine::{Command, LogSpec, check_log_name};
use super::{RaftConfig, RaftLog, Transport};
use crate::{Catalog, CommitLog, LogError, LogInfo};

/// A Raft group on the wire: a log's name (empty: the default log) and its
/// incarnation (0 for the default log).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId {
    /// The log's name.
    pub log: String,
    /// The index of the default log's entry that created it.
    pub incarnation: u64,
}

impl GroupId {
    /// The default log's group.
    pub fn is_default(&self) -> bool {
        self.log.is_empty()
    }
}

/// How a named log's group starts on a node that has no state for it yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStart {
    /// The node's member id in the default log's group (the same in every group).
    pub member_id: u64,
    /// The cluster's id, as the default log's group knows it.
    pub cluster_id: Option<ClusterId>,
    /// The group's first voters: a node among them starts the group with
    /// them; any other waits for the group's leader to add it.
    pub voters: Vec<Member>,
}

/// Carries the traffic of every Raft group of a node (the agent's is gRPC in
/// `proglog-server`; [`ChannelNetwork`](super::ChannelNetwork) connects nodes
/// of one process).
pub trait Network: Send + Sync + 'static {
    /// The transport of node `node`'s member of `group`: what it sends names
    /// the group.
    fn transport(&self, node: &str, group: &GroupId) -> Arc<dyn Transport>;
    /// Hands what peers send for `log`'s group to `log` (again, after it was
    /// reopened).
    fn attach(&self, log: &Arc<RaftLog>);
    /// Stops handing anything to `log` (it is closing).
    fn detach(&self, log: &RaftLog);
}

struct Opened {
    spec: LogSpec,
    log: Arc<RaftLog>,
}

/// The logs of one node: the default log and the named logs its catalog
/// holds, each a Raft group of its own (see the module's doc).
pub struct Logs {
    default: Arc<RaftLog>,
    /// How the default log was opened: named logs are opened alike.
    template: RaftConfig,
    network: Arc<dyn Network>,
    open: RwLock<BTreeMap<String, Opened>>,
    /// One reconciliation at a time.
    reconciling: Mutex<()>,
    /// Bumped after each reconciliation (creators and deleters wait on it).
    reconciled: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    logger: Logger,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs").field("member", self.default.member()).finish_non_exhaustive()
    }
}

/// How long a create or delete waits for this node to open or close the log
/// once the catalog changed.
const CATALOG_WAIT: Duration = Duration::from_secs(10);
/// How often a named log's leader compares its members with the default
/// log's.
const MEMBERSHIP_INTERVAL: Duration = Duration::from_millis(500);

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Logs {
    /// Hosts `default` (opened with `template`, attached to `network`) and
    /// opens the named logs its catalog holds, removing the directories of
    /// logs it no longer holds. Blocks on disk: call it off the async workers.
    pub fn open(
        default: Arc<RaftLog>,
        template: RaftConfig,
        network: Arc<dyn Network>,
    ) -> Result<Arc<Self>, LogError> {
        let logger = template.logger.clone();
        let logs = Arc::new(Self {
            default,
            template,
            network,
            open: RwLock::default(),
            reconciling: Mutex::new(()),
            reconciled: watch::Sender::new(0),
            stop: watch::Sender::new(false),
            logger,
        });
        logs.reconcile();
        Ok(logs)
    }

    /// Follows the catalog (opening and closing logs as it changes) and keeps
    /// the membership of the named logs this node leads that of the default
    /// log, until [`Logs::close`]. Call it once, within a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let logs = Arc::clone(self);
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut catalog = logs.default.watch_catalog();
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    changed = catalog.changed() => if changed.is_err() { return },
                }
                let logs = Arc::clone(&logs);
                let _ = tokio::task::spawn_blocking(move || logs.reconcile()).await;
            }
        });
        let logs = Arc::clone(self);
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(MEMBERSHIP_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = interval.tick() => logs.follow_membership().await,
                }
            }
        });
    }

    /// The default log.
    pub fn default_log(&self) -> &Arc<RaftLog> {
        &self.default
    }

    /// The log named `name` (empty: the default log): `InvalidArgument` for a
    /// bad name, `NotFound` for one this node does not hold.
    pub fn get(&self, name: &str) -> Result<Arc<RaftLog>, LogError> {
        check_log_name(name)?;
        if name.is_empty() {
            return Ok(Arc::clone(&self.default));
        }
        read(&self.open)
            .get(name)
            .map(|opened| Arc::clone(&opened.log))
            .ok_or_else(|| LogError::NotFound(format!("no log is named {name:?}")))
    }

    /// Every log this node holds: the default log first, then by name.
    pub fn all(&self) -> Vec<(String, Arc<RaftLog>)> {
        let open = read(&self.open);
        let named = open.iter().map(|(name, opened)| (name.clone(), Arc::clone(&opened.log)));
        std::iter::once((String::new(), Arc::clone(&self.default))).chain(named).collect()
    }

    /// Every log this node holds, as [`Logs::all`] orders them.
    pub fn list(&self) -> Vec<LogInfo> {
        let settings = &self.template.settings;
        let default = LogInfo {
            name: String::new(),
            status: self.default.status(),
            retention_bytes: settings.retention_bytes,
            retention_ms: settings.retention_ms,
        };
        let open = read(&self.open);
        let named = open.values().map(|opened| LogInfo {
            name: opened.spec.name.clone(),
            status: opened.log.status(),
            retention_bytes: opened.spec.retention_bytes,
            retention_ms: opened.spec.retention_ms,
        });
        std::iter::once(default).chain(named).collect()
    }

    /// Creates log `name` with its retention (0: the default log's settings
    /// for new logs), replicated through the default log's leader wherever it
    /// is called; answers once this node has opened it. `AlreadyExists` if it
    /// exists, `ResourceExhausted` past [`MAX_LOGS`](super::MAX_LOGS).
    pub async fn create(&self, name: &str, retention_bytes: u64, retention_ms: u64) -> Result<(), LogError> {
        check_named(name)?;
        let settings = &self.template.settings;
        let retention_bytes = if retention_bytes == 0 { settings.retention_bytes } else { retention_bytes };
        let retention_ms = if retention_ms == 0 { settings.retention_ms } else { retention_ms };
        let command =
            Command::CreateLog { name: name.to_owned(), retention_bytes, retention_ms, voters: Vec::new() };
        self.default.command(command).await?;
        self.wait_until(|logs| read(&logs.open).contains_key(name), "open").await
    }

    /// Deletes log `name` and its records on every node; answers once this
    /// node has closed it. `NotFound` if there is none (the default log
    /// cannot be deleted).
    pub async fn delete(&self, name: &str) -> Result<(), LogError> {
        check_named(name)?;
        self.default.command(Command::DeleteLog { name: name.to_owned() }).await?;
        self.wait_until(|logs| !read(&logs.open).contains_key(name), "closed").await
    }

    async fn wait_until(&self, done: impl Fn(&Self) -> bool, what: &str) -> Result<(), LogError> {
        let mut reconciled = self.reconciled.subscribe();
        let waited = tokio::time::timeout(CATALOG_WAIT, async {
            while !done(self) {
                if reconciled.changed().await.is_err() {
                    return Err(LogError::Unavailable("the node is closing".into()));
                }
            }
            Ok(())
        });
        waited.await.unwrap_or_else(|_| {
            Err(LogError::Unavailable(format!(
                "the catalog changed, but this node has not {what} the log within {CATALOG_WAIT:?}"
            )))
        })
    }

    /// Opens the logs the catalog holds and this node does not, closes (and
    /// removes) those it no longer holds, then removes any other directory
    /// under `logs/` (a log deleted while this node was down).
    fn reconcile(&self) {
        let _one = self.reconciling.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *self.stop.borrow() {
            return;
        }
        let catalog = self.default.catalog();
        // A deleted log is closed and its files removed before it leaves the
        // map: whoever waits for it to be gone (a `DeleteLog`) finds its disk
        // freed.
        let gone: Vec<(LogSpec, Arc<RaftLog>)> = read(&self.open)
            .values()
            .filter(|opened| {
                catalog.get(&opened.spec.name).map(|spec| spec.incarnation) != Some(opened.spec.incarnation)
            })
            .map(|opened| (opened.spec.clone(), Arc::clone(&opened.log)))
            .collect();
        for (spec, log) in gone {
            self.network.detach(&log);
            if let Err(error) = log.close() {
                slog::warn!(self.logger, "closing a deleted log failed"; "log" => &spec.name, "error" => %error);
            }
            self.remove_dir(&self.dir_of(&spec));
            write(&self.open).remove(&spec.name);
            slog::info!(self.logger, "deleted a log"; "log" => &spec.name);
        }
        for spec in catalog.values() {
            if read(&self.open).contains_key(&spec.name) {
                continue;
            }
            match self.open_log(spec) {
                Ok(log) => {
                    self.network.attach(&log);
                    write(&self.open).insert(spec.name.clone(), Opened { spec: spec.clone(), log });
                    slog::info!(self.logger, "opened a log"; "log" => &spec.name, "incarnation" => spec.incarnation);
                }
                Err(error) => {
                    slog::error!(self.logger, "cannot open a log (retried when the catalog changes)";
                        "log" => &spec.name, "error" => %error);
                }
            }
        }
        self.sweep(&catalog);
        self.reconciled.send_modify(|count| *count += 1);
    }

    fn logs_dir(&self) -> PathBuf {
        self.template.data_dir.join("logs")
    }

    fn dir_of(&self, spec: &LogSpec) -> PathBuf {
        self.logs_dir().join(format!("{}@{}", spec.name, spec.incarnation))
    }

    fn open_log(&self, spec: &LogSpec) -> Result<Arc<RaftLog>, LogError> {
        let dir = self.dir_of(spec);
        let mut config = self.template.clone();
        config.group = GroupId { log: spec.name.clone(), incarnation: spec.incarnation };
        config.start = Some(GroupStart {
            member_id: self.default.member().id,
            cluster_id: self.default.identity().cluster_id,
            voters: spec.voters.clone(),
        });
        config.bootstrap = false;
        config.settings.retention_bytes = spec.retention_bytes;
        config.settings.retention_ms = spec.retention_ms;
        config.logger = self.template.logger.new(slog::o!("log" => spec.name.clone()));
        config.data_dir = dir.clone();
        let records = proglog_log::Log::open(dir.join("log"), config.settings.record_log_config())?;
        let transport = self.network.transport(&self.default.member().name, &config.group);
        Ok(Arc::new(RaftLog::open(config, records, transport)?))
    }

    /// Removes the directories under `logs/` that no log of `catalog` is in.
    fn sweep(&self, catalog: &BTreeMap<String, LogSpec>) {
        let Ok(entries) = std::fs::read_dir(self.logs_dir()) else { return };
        let wanted: Vec<PathBuf> = catalog.values().map(|spec| self.dir_of(spec)).collect();
        for entry in entries.flatten() {
            let path = entry.path();
            if !wanted.contains(&path) {
                self.remove_dir(&path);
            }
        }
    }

    fn remove_dir(&self, dir: &Path) {
        if let Err(error) = std::fs::remove_dir_all(dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            slog::warn!(self.logger, "cannot remove a deleted log's files"; "dir" => %dir.display(), "error" => %error);
        }
    }

    /// On each named log this node leads: one membership change towards the
    /// default log's members (a member added, else one removed).
    async fn follow_membership(&self) {
        let wanted = self.default.members();
        let led: Vec<Arc<RaftLog>> = read(&self.open)
            .values()
            .filter(|opened| opened.log.status().is_leader)
            .map(|o| Arc::clone(&o.log))
            .collect();
        for log in led {
            let have = log.members();
            let change = if let Some(missing) = wanted.iter().find(|m| !have.iter().any(|h| h.id == m.id)) {
                log.join(missing.clone()).await
            } else if let Some(extra) = have.iter().find(|h| !wanted.iter().any(|m| m.id == h.id)) {
                log.leave(extra.id).await
            } else {
                continue;
            };
            if let Err(error) = change {
                slog::debug!(self.logger, "a log's membership change waits"; "log" => &log.group().log, "error" => %error);
            }
        }
    }

    /// Resolves with the reason once any log of this node (the default log or
    /// a named one) has stopped for good: the node can no longer do its job
    /// (SPEC §2: it says so and exits). A log closed cleanly (deleted, or at
    /// shutdown) is no failure; logs created later are watched too.
    pub async fn failed(&self) -> String {
        let mut reconciled = self.reconciled.subscribe();
        loop {
            let watched: Vec<_> = self
                .all()
                .into_iter()
                .map(|(name, log)| {
                    let mut failure = log.failure();
                    Box::pin(async move {
                        let failed = failure.wait_for(Option::is_some).await;
                        match failed.map(|reason| reason.clone().unwrap_or_default()) {
                            Ok(reason) if name.is_empty() => reason,
                            Ok(reason) => format!("log {name:?}: {reason}"),
                            // Closed without a failure: never resolves.
                            Err(_) => std::future::pending().await,
                        }
                    })
                })
                .collect();
            tokio::select! {
                (reason, _, _) = futures_util::future::select_all(watched) => return reason,
                changed = reconciled.changed() => if changed.is_err() { return std::future::pending().await },
            }
        }
    }

    /// Stops following the catalog and closes the named logs (the default
    /// log is its opener's to close). Blocks on disk.
    pub fn close(&self) -> Result<(), LogError> {
        self.stop.send_replace(true);
        let _one = self.reconciling.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = std::mem::take(&mut *write(&self.open));
        let mut result = Ok(());
        for opened in open.into_values() {
            self.network.detach(&opened.log);
            if let Err(error) = opened.log.close() {
                result = Err(error);
            }
        }
        result
    }
}

#[async_trait::async_trait]
impl Catalog for Logs {
    fn get(&self, name: &str) -> Result<Arc<dyn CommitLog>, LogError> {
        Logs::get(self, name).map(|log| log as Arc<dyn CommitLog>)
    }

    async fn create(&self, name: &str, retention_bytes: u64, retention_ms: u64) -> Result<(), LogError> {
        Logs::create(self, name, retention_bytes, retention_ms).await
    }

    async fn delete(&self, name: &str) -> Result<(), LogError> {
        Logs::delete(self, name).await
    }

    fn list(&self) -> Vec<LogInfo> {
        Logs::list(self)
    }
}

fn check_named(name: &str) -> Result<(), LogError> {
    check_log_name(name)?;
    if name.is_empty() {
        return Err(LogError::InvalidArgument("the default log is always there: name a log".into()));
    }
    Ok(())
}
