//! Gossip membership turned into Raft configuration: the leader adds every live
//! member gossip knows and removes those that left gracefully; a member that
//! merely failed stays (SPEC §3: flapping must not churn the configuration).
//! Followers keep the leaves they heard of, so a leader elected later applies
//! them; every leader reconciles the live members on election and every few
//! seconds, so a join that happened during an election is not lost.
//!
//! Identity rules (SPEC §2, "Cluster integrity"): a member is its member id,
//! not its name. A live node whose name a member of another id holds is:
//! - refused while that member is live too (a second node claiming a live
//!   member's name: counted as `name_conflict`);
//! - otherwise the member's new identity (its data dir was lost): the old one
//!   is removed, then the new one added as a learner and promoted once caught
//!   up — never taken for the old one.
//!
//! With `--peer-tls-require-node-name`, a node joins under a name, replaces a
//! member, or moves a member to another address only once a TLS handshake with
//! it shows its certificate names it (`node_name` otherwise).
//!
//! Nodes of another cluster never get here: gossip refuses them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proglog_discovery::{Discovery, Event, Node};
use proglog_raft::{CommitLog, LogError, Member, RaftLog, Reason};
use proglog_server::PeerTransport;
use slog::{Logger, debug, info, warn};
use tokio::sync::{mpsc, watch};

/// How often a leader reconciles without news.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// At most one log line about a name conflict per this period.
const CONFLICT_WARNING_PERIOD: Duration = Duration::from_secs(10);

/// A member by name and id, as gossip reports leaves.
type Key = (String, u64);

struct Loop {
    log: Arc<RaftLog>,
    discovery: Arc<Discovery>,
    /// Checks a node's certificate names it, before it joins under that name
    /// or moves (with `--peer-tls-require-node-name`).
    transport: PeerTransport,
    logger: Logger,
    /// Members that left gracefully, not yet removed.
    leaves: HashSet<Key>,
    last_conflict_warning: Option<Instant>,
}

/// Runs until `stopped` turns true or discovery stops.
pub(crate) async fn run(
    log: Arc<RaftLog>,
    discovery: Arc<Discovery>,
    transport: PeerTransport,
    mut events: mpsc::Receiver<Event>,
    mut stopped: watch::Receiver<bool>,
    logger: Logger,
) {
    let mut status = log.watch_status();
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    let mut this =
        Loop { log, discovery, transport, logger, leaves: HashSet::new(), last_conflict_warning: None };
    let mut cluster_known = this.log.identity().cluster_id.is_some();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Joined(node)) => {
                    info!(this.logger, "member joined"; "member" => &node.name, "member_id" => node.member_id,
                        "rpc_addr" => &node.rpc_addr);
                    this.leaves.remove(&(node.name, node.member_id));
                }
                Some(Event::Left { name, member_id }) => {
                    info!(this.logger, "member left"; "member" => &name, "member_id" => member_id);
                    this.leaves.insert((name, member_id));
                }
                Some(Event::Failed { name, member_id }) => {
                    // Not removed: it may come back (flapping must not churn).
                    warn!(this.logger, "member failed"; "member" => &name, "member_id" => member_id);
                }
                None => return,
            },
            changed = status.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        if !cluster_known && let Some(cluster_id) = this.log.identity().cluster_id {
            // Learned from the cluster that added this node: gossip now refuses
            // other clusters' nodes too.
            this.discovery.set_cluster_id(cluster_id.get());
            cluster_known = true;
        }
        if this.log.status().is_leader {
            this.reconcile().await;
        }
    }
}

impl Loop {
    /// On the leader: join live members missing from the configuration (or at
    /// another address), replace members whose name a new identity took while
    /// they are gone, remove those that left.
    async fn reconcile(&mut self) {
        let members = self.log.members();
        let live = self.discovery.members();
        let me = self.log.member().id;
        for node in &live {
            if self.leaves.contains(&(node.name.clone(), node.member_id)) || node.member_id == 0 {
                continue;
            }
            if let Some(known) = members.iter().find(|member| member.id == node.member_id) {
                if known.name != node.name {
                    continue; // the node refuses an id taken by another name
                }
                if known.rpc_addr != node.rpc_addr || known.gossip_addr != node.gossip_addr.to_string() {
                    self.join(node).await; // back at another address: same role
                }
                continue;
            }
            match members.iter().find(|member| member.name == node.name) {
                Some(holder) if holder.id == me || live.iter().any(|other| other.member_id == holder.id) => {
                    self.name_conflict(node, holder);
                }
                Some(holder) => {
                    // The holder is gone and a new identity claims its name: its
                    // data dir was lost. Replace it (the new one joins next round),
                    // if the claimant's certificate names it (when that is required).
                    if let Err(reason) = self.transport.verify_node(&node.name, &node.rpc_addr).await {
                        let detail = format!("its certificate does not name it: {reason}");
                        self.transport.refuse(Reason::NodeName, &node.name, &detail);
                        continue;
                    }
                    info!(self.logger, "a member came back without its data: replacing it"; "member" => &node.name,
                        "old_member_id" => holder.id, "new_member_id" => node.member_id);
                    self.remove(holder.id, &holder.name).await;
                }
                None => self.join(node).await,
            }
        }
        let leaving: Vec<Key> = self.leaves.iter().cloned().collect();
        for (name, id) in leaving {
            if !members.iter().any(|member| member.id == id) {
                self.leaves.remove(&(name, id));
                continue;
            }
            if self.remove(id, &name).await {
                self.leaves.remove(&(name, id));
            }
        }
    }

    async fn join(&self, node: &Node) {
        if let Err(reason) = self.transport.verify_node(&node.name, &node.rpc_addr).await {
            let detail = format!("its certificate does not name it: {reason}");
            return self.transport.refuse(Reason::NodeName, &node.name, &detail);
        }
        let member = Member::new(&node.name, &node.rpc_addr)
            .with_id(node.member_id)
            .with_gossip_addr(node.gossip_addr.to_string());
        match self.log.join(member).await {
            Ok(()) => info!(self.logger, "added to the cluster"; "member" => &node.name,
                "member_id" => node.member_id, "rpc_addr" => &node.rpc_addr),
            Err(error) => {
                debug!(self.logger, "cannot add a member yet"; "member" => &node.name, "error" => %error)
            }
        }
    }

    /// Removes member `id`; `true` once it is gone (or cannot be removed).
    async fn remove(&self, id: u64, name: &str) -> bool {
        match self.log.leave(id).await {
            Ok(()) => {
                info!(self.logger, "removed from the cluster"; "member" => name, "member_id" => id);
                true
            }
            Err(LogError::InvalidArgument(reason)) => {
                warn!(self.logger, "a member cannot be removed"; "member" => name, "reason" => reason);
                true
            }
            Err(error) => {
                debug!(self.logger, "cannot remove a member yet"; "member" => name, "error" => %error);
                false
            }
        }
    }

    /// A second live node claims `holder`'s name: refused, counted, said (at
    /// most once per [`CONFLICT_WARNING_PERIOD`]).
    fn name_conflict(&mut self, node: &Node, holder: &Member) {
        let before = self.log.rejections().count(Reason::NameConflict);
        if self.last_conflict_warning.is_none_or(|at| at.elapsed() >= CONFLICT_WARNING_PERIOD) {
            self.last_conflict_warning = Some(Instant::now());
            warn!(self.logger, "refused a node claiming the name of a live member"; "name" => &node.name,
                "member_id" => holder.id, "member_rpc_addr" => &holder.rpc_addr,
                "claimant_member_id" => node.member_id, "claimant_rpc_addr" => &node.rpc_addr,
                "claimant_gossip_addr" => %node.gossip_addr, "refused_so_far" => before + 1);
        }
    }
}
