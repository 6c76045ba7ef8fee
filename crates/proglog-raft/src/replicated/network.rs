//! An in-process [`Transport`]: nodes of one process (tests, embedders running
//! several nodes) exchange messages through their mailboxes. Links can be cut to
//! simulate partitions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::{Message, MessageType};

use super::{
    FetchSink, GroupId, Mailbox, Member, Network, PeerId, PendingCommand, RaftLog, StatusWatch, Transport,
};
use crate::records::Committed;
use crate::{Append, LogError, PendingAppend};

/// Records per fetched chunk, at most (bytes are bounded too: 1 MiB).
const FETCH_CHUNK_BYTES: u64 = 1 << 20;

#[derive(Default)]
struct Nodes {
    /// Attached nodes' ids and identities, by group and name.
    names: HashMap<(GroupId, String), (u64, StatusWatch)>,
    mailboxes: HashMap<(GroupId, u64), Mailbox>,
    records: HashMap<(GroupId, u64), Committed>,
    /// Cut links (between nodes: every group), both directions.
    cut: HashSet<(u64, u64)>,
}

/// Connects [`RaftLog`]s of one process, of any number of groups.
pub struct ChannelNetwork {
    nodes: Mutex<Nodes>,
    /// Itself, for the transports it hands out.
    me: std::sync::Weak<ChannelNetwork>,
}

impl std::fmt::Debug for ChannelNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelNetwork").finish_non_exhaustive()
    }
}

impl ChannelNetwork {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::new_cyclic(|me| Self { nodes: Mutex::default(), me: me.clone() })
    }

    fn nodes(&self) -> MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The transport for the node named `name` (open its log with it, then
    /// [`ChannelNetwork::attach`] the log). Call it within a tokio runtime: the
    /// transport runs snapshot fetches there.
    pub fn transport(self: &Arc<Self>, name: &str) -> Arc<dyn Transport> {
        Network::transport(self.as_ref(), name, &GroupId::default())
    }

    /// Connects `log` to the network (again, after it was reopened).
    pub fn attach(&self, log: &RaftLog) {
        let mut nodes = self.nodes();
        let (id, group) = (log.member().id, log.group().clone());
        nodes.names.insert((group.clone(), log.member().name.clone()), (id, log.watch_status()));
        nodes.mailboxes.insert((group.clone(), id), log.mailbox());
        nodes.records.insert((group, id), log.records.clone());
    }

    /// Disconnects the node named `name`, every group of it (it stopped).
    pub fn detach(&self, name: &str) {
        let mut nodes = self.nodes();
        let gone: Vec<(GroupId, u64)> = nodes
            .names
            .iter()
            .filter(|((_, n), _)| n == name)
            .map(|((g, _), (id, _))| (g.clone(), *id))
            .collect();
        for (group, id) in gone {
            nodes.names.remove(&(group.clone(), name.to_owned()));
            nodes.mailboxes.remove(&(group.clone(), id));
            nodes.records.remove(&(group, id));
        }
    }

    /// Cuts every link of the node named `name`.
    pub fn isolate(&self, name: &str) {
        let mut nodes = self.nodes();
        let Some(id) = nodes.names.get(&(GroupId::default(), name.to_owned())).map(|(id, _)| *id) else {
            return;
        };
        let others: Vec<u64> =
            nodes.mailboxes.keys().map(|(_, id)| *id).filter(|other| *other != id).collect();
        for other in others {
            nodes.cut.insert((id, other));
            nodes.cut.insert((other, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.nodes().cut.clear();
    }
}

impl Network for ChannelNetwork {
    /// Call it within a tokio runtime: the transport runs snapshot fetches there.
    fn transport(&self, node: &str, group: &GroupId) -> Arc<dyn Transport> {
        Arc::new(Link {
            network: self.me.upgrade().unwrap_or_else(ChannelNetwork::new),
            name: node.to_owned(),
            group: group.clone(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn attach(&self, log: &Arc<RaftLog>) {
        ChannelNetwork::attach(self, log);
    }

    fn detach(&self, log: &RaftLog) {
        let mut nodes = self.nodes();
        let (id, group) = (log.member().id, log.group().clone());
        nodes.names.remove(&(group.clone(), log.member().name.clone()));
        nodes.mailboxes.remove(&(group.clone(), id));
        nodes.records.remove(&(group, id));
    }
}

struct Link {
    network: Arc<ChannelNetwork>,
    name: String,
    group: GroupId,
    runtime: tokio::runtime::Handle,
}

impl Link {
    /// This node's id and identity, once attached.
    fn me(&self) -> Option<(u64, PeerId)> {
        let nodes = self.network.nodes();
        nodes.names.get(&(self.group.clone(), self.name.clone())).map(|(id, status)| (*id, status.identity()))
    }

    /// The mailbox of `to` in this group, unless the link to it is cut.
    fn reach(&self, me: u64, to: u64) -> Option<Mailbox> {
        let nodes = self.network.nodes();
        (!nodes.cut.contains(&(me, to)))
            .then(|| nodes.mailboxes.get(&(self.group.clone(), to)).cloned())
            .flatten()
    }
}

impl Transport for Link {
    fn set_members(&self, _members: &[Member]) {}

    fn send(&self, to: u64, messages: Vec<Message>) {
        let Some((me, identity)) = self.me() else { return };
        let target = self.reach(me, to);
        let own = self.network.nodes().mailboxes.get(&(self.group.clone(), me)).cloned();
        for message in messages {
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = target.as_ref().is_some_and(|mailbox| mailbox.deliver(identity.clone(), message));
            if let Some(own) = &own {
                if !delivered {
                    own.unreachable(to);
                }
                if snapshot {
                    own.snapshot_status(to, delivered);
                }
            }
        }
    }

    fn forward(&self, to: u64, append: Append) -> PendingAppend {
        let target = self.me().and_then(|(me, _)| self.reach(me, to));
        Box::pin(async move {
            let mailbox = target.ok_or_else(|| LogError::Unavailable("the leader is unreachable".into()))?;
            mailbox.append(append).await?.await
        })
    }

    fn command(&self, to: u64, command: Vec<u8>) -> PendingCommand {
        let target = self.me().and_then(|(me, _)| self.reach(me, to));
        Box::pin(async move {
            let mailbox = target.ok_or_else(|| LogError::Unavailable("the leader is unreachable".into()))?;
            mailbox.command(&command).await
        })
    }

    fn fetch(&self, from: u64, start: u64, end: u64, sink: FetchSink) {
        let source = self.me().and_then(|(me, _)| {
            let nodes = self.network.nodes();
            (!nodes.cut.contains(&(me, from)))
                .then(|| nodes.records.get(&(self.group.clone(), from)).cloned())
                .flatten()
        });
        let Some(source) = source else {
            sink.fail("the source is unreachable");
            return;
        };
        self.runtime.spawn(async move {
            let mut next = start.max(source.lowest());
            if next >= end {
                // Nothing left to copy: the first chunk says where the source starts.
                sink.chunk(next, Vec::new(), Vec::new()).await;
                return sink.finish();
            }
            while next < end {
                match source.read_batch(next, FETCH_CHUNK_BYTES).await {
                    Ok(records) if !records.is_empty() => {
                        let first = records[0].offset;
                        let (values, timestamps): (Vec<_>, Vec<_>) = records
                            .into_iter()
                            .take_while(|r| r.offset < end)
                            .map(|r| (r.value, r.timestamp_ms))
                            .unzip();
                        next = first + values.len() as u64;
                        if !sink.chunk(first, values, timestamps).await {
                            return sink.finish();
                        }
                    }
                    Ok(_) => return sink.fail("the source holds nothing there"),
                    Err(error) => return sink.fail(error.to_string()),
                }
            }
            sink.finish();
        });
    }
}
