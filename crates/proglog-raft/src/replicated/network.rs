//! An in-process [`Transport`]: nodes of one process (tests, embedders running
//! several nodes) exchange messages through their mailboxes. Links can be cut to
//! simulate partitions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::{Message, MessageType};

use super::{FetchSink, Mailbox, Member, PeerId, RaftLog, StatusWatch, Transport};
use crate::records::Committed;
use crate::{Append, LogError, PendingAppend};

/// Records per fetched chunk, at most (bytes are bounded too: 1 MiB).
const FETCH_CHUNK_BYTES: u64 = 1 << 20;

#[derive(Default)]
struct Nodes {
    /// Attached nodes' ids and identities, by name.
    names: HashMap<String, (u64, StatusWatch)>,
    mailboxes: HashMap<u64, Mailbox>,
    records: HashMap<u64, Committed>,
    /// Cut links, both directions.
    cut: HashSet<(u64, u64)>,
}

/// Connects [`RaftLog`]s of one process.
#[derive(Default)]
pub struct ChannelNetwork {
    nodes: Mutex<Nodes>,
}

impl std::fmt::Debug for ChannelNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelNetwork").finish_non_exhaustive()
    }
}

impl ChannelNetwork {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn nodes(&self) -> MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The transport for the node named `name` (open its log with it, then
    /// [`ChannelNetwork::attach`] the log). Call it within a tokio runtime: the
    /// transport runs snapshot fetches there.
    pub fn transport(self: &Arc<Self>, name: &str) -> Arc<dyn Transport> {
        Arc::new(Link {
            network: Arc::clone(self),
            name: name.to_owned(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Connects `log` to the network (again, after it was reopened).
    pub fn attach(&self, log: &RaftLog) {
        let mut nodes = self.nodes();
        let id = log.member().id;
        nodes.names.insert(log.member().name.clone(), (id, log.watch_status()));
        nodes.mailboxes.insert(id, log.mailbox());
        nodes.records.insert(id, log.records.clone());
    }

    /// Disconnects the node named `name` (it stopped).
    pub fn detach(&self, name: &str) {
        let mut nodes = self.nodes();
        if let Some((id, _)) = nodes.names.remove(name) {
            nodes.mailboxes.remove(&id);
            nodes.records.remove(&id);
        }
    }

    /// Cuts every link of the node named `name`.
    pub fn isolate(&self, name: &str) {
        let mut nodes = self.nodes();
        let Some(id) = nodes.names.get(name).map(|(id, _)| *id) else { return };
        let others: Vec<u64> = nodes.mailboxes.keys().copied().filter(|other| *other != id).collect();
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

struct Link {
    network: Arc<ChannelNetwork>,
    name: String,
    runtime: tokio::runtime::Handle,
}

impl Link {
    /// This node's id and identity, once attached.
    fn me(&self) -> Option<(u64, PeerId)> {
        self.network.nodes().names.get(&self.name).map(|(id, status)| (*id, status.identity()))
    }

    /// The mailbox of `to`, unless the link to it is cut.
    fn reach(&self, me: u64, to: u64) -> Option<Mailbox> {
        let nodes = self.network.nodes();
        (!nodes.cut.contains(&(me, to))).then(|| nodes.mailboxes.get(&to).cloned()).flatten()
    }
}

impl Transport for Link {
    fn set_members(&self, _members: &[Member]) {}

    fn send(&self, to: u64, messages: Vec<Message>) {
        let Some((me, identity)) = self.me() else { return };
        let target = self.reach(me, to);
        let own = self.network.nodes().mailboxes.get(&me).cloned();
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

    fn fetch(&self, from: u64, start: u64, end: u64, sink: FetchSink) {
        let source = self.me().and_then(|(me, _)| {
            let nodes = self.network.nodes();
            (!nodes.cut.contains(&(me, from))).then(|| nodes.records.get(&from).cloned()).flatten()
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
