//! Gossip membership turned into Raft configuration: the leader adds every live
//! member gossip knows and removes those that left gracefully; a member that
//! merely failed stays (SPEC §3: flapping must not churn the configuration).
//! Followers keep the leaves they heard of, so a leader elected later applies
//! them; every leader reconciles the live members on election and every few
//! seconds, so a join that happened during an election is not lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use proglog_discovery::{Discovery, Event};
use proglog_raft::{CommitLog, LogError, Member, RaftLog};
use slog::{Logger, debug, info, warn};
use tokio::sync::{mpsc, watch};

/// How often a leader reconciles without news.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// Runs until `stopped` turns true or discovery stops.
pub(crate) async fn run(
    log: Arc<RaftLog>,
    discovery: Arc<Discovery>,
    mut events: mpsc::Receiver<Event>,
    mut stopped: watch::Receiver<bool>,
    logger: Logger,
) {
    let mut status = log.watch_status();
    let mut leaves: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Joined { name, rpc_addr }) => {
                    info!(logger, "member joined"; "member" => &name, "rpc_addr" => &rpc_addr);
                    leaves.remove(&name);
                }
                Some(Event::Left { name }) => {
                    info!(logger, "member left"; "member" => &name);
                    leaves.insert(name);
                }
                Some(Event::Failed { name }) => {
                    // Not removed: it may come back (flapping must not churn).
                    warn!(logger, "member failed"; "member" => &name);
                }
                None => return,
            },
            changed = status.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        if log.status().is_leader {
            reconcile(&log, &discovery, &mut leaves, &logger).await;
        }
    }
}

/// On the leader: join live members missing from the configuration (or at
/// another address), remove those that left.
async fn reconcile(log: &RaftLog, discovery: &Discovery, leaves: &mut HashSet<String>, logger: &Logger) {
    let servers = log.servers().await.unwrap_or_default();
    for node in discovery.members() {
        let known = servers.iter().any(|server| server.id == node.name && server.rpc_addr == node.rpc_addr);
        if known || leaves.contains(&node.name) {
            continue;
        }
        match log.join(Member::new(&node.name, &node.rpc_addr)).await {
            Ok(()) => {
                info!(logger, "added to the cluster"; "member" => &node.name, "rpc_addr" => &node.rpc_addr)
            }
            Err(error) => {
                debug!(logger, "cannot add a member yet"; "member" => &node.name, "error" => %error)
            }
        }
    }
    let leaving: Vec<String> = leaves.iter().cloned().collect();
    for name in leaving {
        if !servers.iter().any(|server| server.id == name) {
            leaves.remove(&name);
            continue;
        }
        match log.leave(&name).await {
            Ok(()) => {
                info!(logger, "removed from the cluster"; "member" => &name);
                leaves.remove(&name);
            }
            Err(LogError::InvalidArgument(reason)) => {
                warn!(logger, "a member that left cannot be removed"; "member" => &name, "reason" => reason);
                leaves.remove(&name);
            }
            Err(error) => debug!(logger, "cannot remove a member yet"; "member" => &name, "error" => %error),
        }
    }
}
