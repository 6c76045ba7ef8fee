//! A seeded, deterministic simulation of clusters of [`Node`]s: an in-memory
//! network that drops, duplicates, delays (reorders) and partitions messages,
//! crash-restarts that lose what was not synced, disks wiped between runs (the
//! node comes back as a new member, and the cluster replaces the old one), a
//! node of another cluster sending to ours, and peer messages rewritten into
//! what the gate must refuse (terms up to `u64::MAX`, indexes beyond any log,
//! unknown or impostor senders, other clusters) — checking after every step that
//! no node panics, that there is at most one leader per term, that every node's
//! records agree with one committed history, that a node's applied index never
//! goes back while it runs, that no acknowledged append is lost, and that a
//! linearizable read sees every append acknowledged before it was asked.
//!
//! A failure prints its seed. Replay one with `PROGLOG_SIM_SEED=<seed>` (and
//! `PROGLOG_SIM_NODES=3|5`); run more with `PROGLOG_SIM_SEEDS=<count>`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use proglog_log::Log;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::oneshot;

use super::codec::{ClusterId, Member, PeerId};
use super::gate::{MAX_TERM, Reason, Rejections};
use super::machine::Command;
use super::node::{AppendReply, ChangeReply, Fetch, Node, NodeConfig, Outbox, Proposal};
use super::store::Store;
use crate::records::Committed;
use crate::{Fsync, LogError};

/// splitmix64: a tiny generator whose sequence never changes between versions,
/// so a printed seed replays the same run forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

struct SimNode {
    member: Member,
    /// Ids this slot had before its disk was wiped (messages to them still come
    /// here, as to the same address).
    old_ids: Vec<u64>,
    /// Wiped, and its new member not yet seen voting: until then the slot
    /// counts as down (a wiped voter is lost until replaced).
    replacing: bool,
    /// A node of another cluster, not part of the checked history.
    foreign: bool,
    rejections: Arc<Rejections>,
    dir: PathBuf,
    node: Option<Node>,
    outbox: Outbox,
    /// Requested syncs: (tick at which it completes, round).
    syncs: Vec<(u64, u64)>,
    /// Records below this offset were checked against the history.
    checked: u64,
    /// Committed records below this offset had their terms checked (this life).
    terms_checked: u64,
    /// The applied index this life started from or reached.
    applied: u64,
    /// Tick at which a crashed node restarts.
    restart_at: u64,
}

struct InFlight {
    at: u64,
    seq: u64,
    /// Who the transport says sent it.
    from: PeerId,
    message: Message,
}

struct Pending {
    /// The node it was proposed on (which must be able to read it once acknowledged).
    target: usize,
    values: Vec<Bytes>,
    reply: oneshot::Receiver<Result<u64, LogError>>,
}

/// A linearizable read asked of node `target`.
struct Read {
    target: usize,
    /// The offset after every record acknowledged before it was asked: once
    /// the node has applied the read index, it must have applied these.
    must_see: u64,
    reply: oneshot::Receiver<Result<u64, LogError>>,
    /// The read index, once known.
    index: Option<u64>,
}

/// An idempotent producer: it sends its sequences in order and resends a
/// batch (same sequence, same values) until it is acknowledged.
#[derive(Default)]
struct SimProducer {
    id: u64,
    /// The next sequence of a new batch.
    next: u64,
    /// The batch being sent: (first sequence, values), and the answer awaited.
    batch: Option<(u64, Vec<Bytes>)>,
    reply: Option<oneshot::Receiver<Result<u64, LogError>>>,
    /// Batches acknowledged.
    acked: u64,
}

/// A consumer position committed through node `target`.
struct Commit {
    group: String,
    offset: u64,
    reply: oneshot::Receiver<Result<(), LogError>>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: u64,
    seq: u64,
    _dir: tempfile::TempDir,
    nodes: Vec<SimNode>,
    network: Vec<InFlight>,
    cut: HashSet<(u64, u64)>,
    heal_at: u64,
    history: BTreeMap<u64, Bytes>,
    /// The term that committed each record, as the first node to serve it said.
    terms: BTreeMap<u64, u64>,
    /// Each record's timestamp, as the first node to serve it said.
    timestamps: BTreeMap<u64, u64>,
    acked: BTreeMap<u64, Bytes>,
    pending: Vec<Pending>,
    reads: Vec<Read>,
    /// Linearizable reads checked so far.
    reads_checked: u64,
    commits: Vec<Commit>,
    producers: Vec<SimProducer>,
    /// Where each committed value is, to find one stored twice.
    stored_at: HashMap<Bytes, u64>,
    /// Consumer positions acknowledged (each group committed once).
    positions: BTreeMap<String, u64>,
    leaders: HashMap<u64, u64>,
    fetches: Vec<(usize, Fetch)>,
    counter: u64,
    faults: bool,
    /// Disks wiped so far.
    wipes: u64,
    /// Messages rewritten into what the gate must refuse.
    mutated: u64,
}

fn node_config(rng: &mut Rng) -> NodeConfig {
    // A fixed timeout per node and life (raft-rs would draw one from its own
    // unseeded generator): distinct across nodes, so elections settle.
    let timeout = 10 + rng.below(10) as usize;
    NodeConfig {
        election_tick: 10,
        election_range: (timeout, timeout + 1),
        heartbeat_tick: 1,
        compact_entries: 24,
        trailing_entries: 4,
        max_batch_bytes: 4 << 10,
        max_uncommitted_bytes: 1 << 20,
        leader_changes: metrics::Counter::noop(),
        snapshot_fetches: metrics::Counter::noop(),
        // Small segments (`records_config`): retention keeps cutting.
        retention_bytes: 6 << 10,
        retention_ms: 0,
        producer_expiry_ms: 0,
    }
}

/// A node's committed records, as its peers and readers see them.
fn committed_records(node: &Node) -> Committed {
    let store = node.store();
    Committed {
        retained: store.retained(),
        log: Arc::clone(store.data()),
        committed: node.committed(),
        terms: Some(store.terms().clone()),
        framed_from: Some(store.framed_from()),
    }
}

fn records_config() -> proglog_log::Config {
    proglog_log::Config {
        max_store_bytes: 2 << 10,
        max_index_bytes: 64 * 8,
        ..proglog_log::Config::default()
    }
}

/// With `PROGLOG_SIM_TRACE` set, nodes (raft-rs included) log to stderr.
fn logger(name: &str) -> slog::Logger {
    struct Stderr;
    impl slog::Drain for Stderr {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
            struct Line(String);
            impl slog::Serializer for Line {
                fn emit_arguments(
                    &mut self,
                    key: slog::Key,
                    value: &std::fmt::Arguments<'_>,
                ) -> slog::Result {
                    self.0.push_str(&format!(" {key}={value}"));
                    Ok(())
                }
            }
            let mut line = Line(format!("{} {}", record.level().as_short_str(), record.msg()));
            let _ = slog::KV::serialize(values, record, &mut line);
            let _ = slog::KV::serialize(&record.kv(), record, &mut line);
            eprintln!("{}", line.0);
            Ok(())
        }
    }
    if std::env::var_os("PROGLOG_SIM_TRACE").is_some() {
        slog::Logger::root(Stderr, slog::o!("node" => name.to_owned()))
    } else {
        slog::Logger::root(slog::Discard, slog::o!())
    }
}

fn trace(message: impl FnOnce() -> String) {
    if std::env::var_os("PROGLOG_SIM_TRACE").is_some() {
        eprintln!("SIM {}", message());
    }
}

impl Sim {
    fn new(seed: u64, size: usize) -> Self {
        super::codec::seed_ids(seed);
        let dir = tempfile::tempdir().expect("temp dir");
        // The last slot is a node of another cluster.
        let nodes = (0..=size)
            .map(|i| {
                let foreign = i == size;
                let name = if foreign { "f0".to_owned() } else { format!("n{i}") };
                let member = Member::new(&name, format!("{name}.invalid:8400"));
                SimNode {
                    dir: dir.path().join(&member.name),
                    member,
                    old_ids: Vec::new(),
                    replacing: false,
                    foreign,
                    rejections: Arc::default(),
                    node: None,
                    outbox: Outbox::default(),
                    syncs: Vec::new(),
                    checked: 0,
                    terms_checked: 0,
                    applied: 0,
                    restart_at: 0,
                }
            })
            .collect();
        let mut sim = Self {
            seed,
            rng: Rng(seed),
            now: 0,
            seq: 0,
            _dir: dir,
            nodes,
            network: Vec::new(),
            cut: HashSet::new(),
            heal_at: 0,
            history: BTreeMap::new(),
            terms: BTreeMap::new(),
            timestamps: BTreeMap::new(),
            acked: BTreeMap::new(),
            pending: Vec::new(),
            reads: Vec::new(),
            reads_checked: 0,
            commits: Vec::new(),
            producers: (1..=3).map(|id| SimProducer { id, ..SimProducer::default() }).collect(),
            stored_at: HashMap::new(),
            positions: BTreeMap::new(),
            leaders: HashMap::new(),
            fetches: Vec::new(),
            counter: 0,
            faults: false,
            wipes: 0,
            mutated: 0,
        };
        for i in 0..=size {
            sim.start(i, i == 0 || i == size);
        }
        sim
    }

    /// The slots of the cluster under test (not the foreign node).
    fn size(&self) -> usize {
        self.nodes.len() - 1
    }

    fn fail(&self, what: String) -> ! {
        panic!("simulation seed {} ({} nodes), tick {}: {what}", self.seed, self.nodes.len(), self.now);
    }

    fn start(&mut self, i: usize, bootstrap: bool) {
        let config = node_config(&mut self.rng);
        let sim_node = &mut self.nodes[i];
        let opened = (|| {
            let data = Arc::new(Log::open(sim_node.dir.join("log"), records_config())?);
            let store = Store::open(&sim_node.dir.join("raft"), Fsync::Never, &sim_node.member.name, data)?;
            let logger = logger(&sim_node.member.name);
            let rejections = Arc::clone(&sim_node.rejections);
            Node::open(sim_node.member.clone(), store, bootstrap, config, logger, rejections)
        })();
        match opened {
            Ok(node) => {
                let id = node.me().id;
                if sim_node.member.id != 0 && sim_node.member.id != id {
                    sim_node.old_ids.push(sim_node.member.id);
                }
                sim_node.member.id = id;
                trace(|| {
                    format!(
                        "start {} last={} applied={}",
                        sim_node.member.name,
                        node.store().last(),
                        node.applied()
                    )
                });
                sim_node.checked = sim_node.checked.min(node.applied_end());
                // Terms are rebuilt on open: check them all again.
                sim_node.terms_checked = 0;
                sim_node.applied = node.applied();
                sim_node.outbox = Outbox::default();
                sim_node.syncs.clear();
                sim_node.node = Some(node);
            }
            Err(error) => self.fail(format!("{} does not restart: {error}", self.nodes[i].member.name)),
        }
    }

    /// Kills the node and then loses what it had not synced (power loss).
    fn crash(&mut self, i: usize) {
        let Some(node) = self.nodes[i].node.take() else { return };
        let synced = node.store().synced_index();
        let durable_records =
            node.store().end_offset(synced).unwrap_or(node.store().snapshot_point().end_offset);
        trace(|| {
            format!(
                "tick {} crash {} synced={synced} last={} applied={}",
                self.now,
                self.nodes[i].member.name,
                node.store().last(),
                node.applied()
            )
        });
        drop(node);
        let dir = self.nodes[i].dir.clone();
        let lost = (|| {
            // The records of entries after the last sync may be lost, in part.
            let records = Log::open(dir.join("log"), records_config())?;
            let next = records.next_offset();
            let keep = durable_records.max(records.lowest_offset())
                + self.rng.below(next.saturating_sub(durable_records) + 1);
            if keep < next {
                records.truncate_from(keep)?;
            }
            Ok::<_, LogError>(())
        })();
        if let Err(error) = lost {
            self.fail(format!("simulating the crash failed: {error}"));
        }
        self.nodes[i].restart_at = self.now + 20 + self.rng.below(200);
    }

    /// Wipes the node's disk: it comes back empty, as a new member under its
    /// name (the cluster must replace the old one, never take it for it).
    fn wipe(&mut self, i: usize) {
        let Some(node) = self.nodes[i].node.take() else { return };
        drop(node);
        trace(|| format!("tick {} wipe {}", self.now, self.nodes[i].member.name));
        if let Err(error) = std::fs::remove_dir_all(&self.nodes[i].dir) {
            self.fail(format!("wiping {} failed: {error}", self.nodes[i].member.name));
        }
        self.wipes += 1;
        let old = std::mem::take(&mut self.nodes[i].member.id);
        self.nodes[i].old_ids.push(old);
        self.nodes[i].replacing = true;
        self.nodes[i].checked = 0;
        self.nodes[i].applied = 0;
        self.nodes[i].restart_at = self.now + 20 + self.rng.below(200);
    }

    /// The running nodes of the cluster under test.
    fn alive(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.foreign)
            .filter_map(|(i, n)| n.node.as_ref().map(|node| (i, node)))
    }

    /// The slot a message to `id` goes to (its current or an earlier id: the
    /// same address).
    fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.member.id == id || n.old_ids.contains(&id))
    }

    fn leader(&self) -> Option<usize> {
        self.alive().filter(|(_, node)| node.is_leader()).max_by_key(|(_, node)| node.term()).map(|(i, _)| i)
    }

    /// Forms the cluster: node 0 bootstrapped, the others joined through it.
    /// Then the foreign node's leader adds them to its configuration (as the
    /// membership loop of a node with another cluster's data dir would).
    fn form(&mut self) {
        for i in 1..self.size() {
            let member = self.nodes[i].member.clone();
            let mut joined = false;
            for _ in 0..2_000 {
                if !joined && let Some(leader) = self.leader() {
                    let (reply, mut done): (ChangeReply, _) = oneshot::channel();
                    self.node_mut(leader).join(member.clone(), reply);
                    for _ in 0..200 {
                        self.step();
                        match done.try_recv() {
                            Ok(Ok(())) => joined = true,
                            Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => break,
                            Err(oneshot::error::TryRecvError::Empty) => continue,
                        }
                        break;
                    }
                }
                self.step();
                if joined && self.voters() == i + 1 {
                    break;
                }
            }
            if self.voters() != i + 1 {
                self.fail(format!("{} did not join", member.name));
            }
        }
        let foreign = self.size();
        for i in 0..self.size() {
            let member = self.nodes[i].member.clone();
            for _ in 0..50 {
                self.step();
            }
            let (reply, _) = oneshot::channel();
            self.node_mut(foreign).join(member, reply);
        }
    }

    fn voters(&self) -> usize {
        self.leader()
            .map_or(0, |i| self.nodes[i].node.as_ref().map_or(0, |n| n.store().conf_state().voters.len()))
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].node.as_mut().expect("alive")
    }

    /// Slots wiped whose new member does not yet know it votes (until it
    /// applied its promotion it cannot campaign: another permanent loss then
    /// would be two, more than the cluster tolerates).
    fn replacing(&mut self) -> usize {
        for slot in &mut self.nodes {
            let id = slot.member.id;
            let voting =
                slot.node.as_ref().is_some_and(|node| node.store().conf_state().voters.contains(&id));
            slot.replacing &= !voting;
        }
        self.nodes.iter().filter(|slot| slot.replacing).count()
    }

    /// What the agent's membership loop does for wiped nodes: on the leader,
    /// remove a slot's old member, then add its new one (one change at a time;
    /// refusals are tried again later).
    fn reconcile(&mut self) {
        let Some(leader) = self.leader() else { return };
        let cs = self.nodes[leader].node.as_ref().map(|n| n.store().conf_state()).unwrap_or_default();
        let in_conf = |id: &u64| cs.voters.contains(id) || cs.learners.contains(id);
        for i in 0..self.size() {
            let slot = &self.nodes[i];
            if slot.node.is_none() || in_conf(&slot.member.id) {
                continue;
            }
            let (reply, _) = oneshot::channel();
            match slot.old_ids.iter().copied().find(|id| in_conf(id)) {
                Some(old) => self.node_mut(leader).leave(old, reply),
                None => {
                    let member = slot.member.clone();
                    self.node_mut(leader).join(member, reply);
                }
            }
            return;
        }
    }

    fn maybe_fault(&mut self) {
        let size = self.size();
        let down = self.nodes[..size].iter().filter(|n| n.node.is_none()).count() + self.replacing();
        if down < (size - 1) / 2 && self.rng.chance(4) {
            let i = self.rng.below(size as u64) as usize;
            if self.rng.chance(200) { self.wipe(i) } else { self.crash(i) }
        }
        if self.cut.is_empty() && self.rng.chance(5) {
            // Split the nodes into two random sides.
            let side: Vec<bool> = (0..size).map(|_| self.rng.chance(500)).collect();
            for a in 0..size {
                for b in 0..size {
                    if side[a] != side[b] {
                        self.cut.insert((self.nodes[a].member.id, self.nodes[b].member.id));
                    }
                }
            }
            self.heal_at = self.now + 30 + self.rng.below(300);
        }
        if !self.cut.is_empty() && self.now >= self.heal_at {
            self.cut.clear();
        }
    }

    fn maybe_propose(&mut self) {
        if !self.rng.chance(300) {
            return;
        }
        let target = match self.leader() {
            Some(leader) if self.rng.chance(850) => leader,
            _ => self.rng.below(self.size() as u64) as usize,
        };
        if self.nodes[target].node.is_none() {
            return;
        }
        let count = 1 + self.rng.below(3);
        let values: Vec<Bytes> = (0..count)
            .map(|_| {
                self.counter += 1;
                Bytes::from(format!("v{}", self.counter))
            })
            .collect();
        let (reply, done): (AppendReply, _) = oneshot::channel();
        let context = opentelemetry::Context::new();
        let now = self.now;
        let proposal = Proposal { values: values.clone(), context, producer: None, reply };
        self.node_mut(target).propose(vec![proposal], now);
        self.pending.push(Pending { target, values, reply: done });
    }

    /// Sometimes sends an idempotent producer's batch (a new one, or the one
    /// not acknowledged yet again) to a random node, the leader most often.
    fn maybe_produce_idempotent(&mut self) {
        if !self.rng.chance(150) {
            return;
        }
        let p = self.rng.below(self.producers.len() as u64) as usize;
        let producer = &mut self.producers[p];
        match producer.reply.as_mut().map(oneshot::Receiver::try_recv) {
            Some(Err(oneshot::error::TryRecvError::Empty)) => return, // still in flight
            Some(Ok(Err(LogError::OutOfOrderSequence(message)))) => {
                let id = producer.id;
                self.fail(format!("producer {id}: an in-order resend was refused: {message}"))
            }
            Some(Ok(Ok(offset))) => {
                let (_, values) = producer.batch.take().unwrap_or_default();
                producer.acked += 1;
                for (offset, value) in (offset..).zip(values) {
                    if let Some(previous) = self.acked.insert(offset, value.clone())
                        && previous != value
                    {
                        self.fail(format!("offset {offset} acknowledged for {previous:?} and {value:?}"));
                    }
                }
            }
            // Failed, or its node went away: send the same batch again.
            Some(Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed)) | None => {}
        }
        let producer = &mut self.producers[p];
        if producer.batch.is_none() {
            let count = 1 + self.rng.below(3);
            let first = producer.next;
            let values =
                (first..first + count).map(|s| Bytes::from(format!("p{}s{s}", producer.id))).collect();
            producer.next += count;
            producer.batch = Some((first, values));
        }
        let target = match self.leader() {
            Some(leader) if self.rng.chance(800) => leader,
            _ => self.rng.below(self.size() as u64) as usize,
        };
        let now = self.now;
        let producer = &mut self.producers[p];
        let (Some(node), Some((first, values))) = (self.nodes[target].node.as_mut(), producer.batch.clone())
        else {
            return;
        };
        let (reply, done) = oneshot::channel();
        let proposal = Proposal {
            values,
            context: opentelemetry::Context::new(),
            producer: Some((producer.id, first)),
            reply,
        };
        node.propose(vec![proposal], now);
        producer.reply = Some(done);
    }

    /// Sometimes commits a consumer position (of a group of its own) through a
    /// random node, the leader most often.
    fn maybe_commit_offset(&mut self) {
        if !self.rng.chance(50) {
            return;
        }
        let target = match self.leader() {
            Some(leader) if self.rng.chance(850) => leader,
            _ => self.rng.below(self.size() as u64) as usize,
        };
        let now = self.now;
        let Some(node) = self.nodes[target].node.as_mut() else { return };
        self.counter += 1;
        let (group, offset) = (format!("g{}", self.counter), node.applied_end());
        let (reply, done) = oneshot::channel();
        let command = Command::CommitOffset { group: group.clone(), offset };
        node.propose_command(command, reply, now);
        self.commits.push(Commit { group, offset, reply: done });
    }

    fn collect_commits(&mut self) {
        for mut commit in std::mem::take(&mut self.commits) {
            match commit.reply.try_recv() {
                Ok(Ok(())) => {
                    self.positions.insert(commit.group, commit.offset);
                }
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {}
                Err(oneshot::error::TryRecvError::Empty) => self.commits.push(commit),
            }
        }
    }

    /// Every node holds the same positions, and every acknowledged one.
    fn check_positions(&self) {
        let mut machines = self.alive().map(|(i, node)| (i, node.store().machine().clone()));
        let Some((first, machine)) = machines.next() else { return };
        for (group, offset) in &self.positions {
            if machine.position(group) != Some(*offset) {
                self.fail(format!(
                    "{} lost acknowledged position {group}={offset}: {:?}",
                    self.nodes[first].member.name,
                    machine.position(group)
                ));
            }
        }
        for (i, other) in machines {
            if other != machine {
                let (a, b) = (&self.nodes[first].member.name, &self.nodes[i].member.name);
                self.fail(format!("{a} and {b} hold different consumer positions"));
            }
        }
    }

    /// Sometimes asks a random node for a linearizable read.
    fn maybe_read(&mut self) {
        if !self.rng.chance(100) {
            return;
        }
        let target = self.rng.below(self.size() as u64) as usize;
        if self.nodes[target].node.is_none() {
            return;
        }
        let must_see = self.acked.keys().next_back().map_or(0, |last| last + 1);
        let (reply, answer) = oneshot::channel();
        self.node_mut(target).read_index(reply);
        self.reads.push(Read { target, must_see, reply: answer, index: None });
    }

    /// A read whose node has applied its read index must see every record
    /// acknowledged before it was asked.
    fn check_reads(&mut self) {
        for mut read in std::mem::take(&mut self.reads) {
            if read.index.is_none() {
                match read.reply.try_recv() {
                    Ok(Ok(index)) => read.index = Some(index),
                    Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => continue,
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
            }
            let slot = &self.nodes[read.target];
            let (Some(index), Some(node)) = (read.index, slot.node.as_ref()) else {
                if slot.node.is_some() {
                    self.reads.push(read);
                }
                continue;
            };
            if node.applied() < index {
                self.reads.push(read);
                continue;
            }
            let readable = *node.committed().borrow();
            if readable < read.must_see {
                self.fail(format!(
                    "a linearizable read on {} (read index {index}) sees offsets below {readable}, \
                     but offsets below {} were acknowledged before it was asked",
                    slot.member.name, read.must_see
                ));
            }
            self.reads_checked += 1;
        }
    }

    fn step(&mut self) {
        self.now += 1;
        if self.faults {
            self.maybe_fault();
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() && self.nodes[i].restart_at <= self.now && self.faults {
                self.start(i, false);
            }
        }
        if self.faults && self.now.is_multiple_of(10) {
            self.reconcile();
        }
        self.maybe_propose();
        self.maybe_read();
        self.maybe_commit_offset();
        self.maybe_produce_idempotent();
        self.deliver();
        self.run_fetches();
        for i in 0..self.nodes.len() {
            let now = self.now;
            let sim_node = &mut self.nodes[i];
            let Some(node) = sim_node.node.as_mut() else { continue };
            // Syncs complete in order, some at once, some a few ticks later.
            let due: Vec<u64> =
                sim_node.syncs.iter().filter(|(at, _)| *at <= now).map(|(_, round)| *round).collect();
            sim_node.syncs.retain(|(at, _)| *at > now);
            if let Some(round) = due.into_iter().max() {
                node.synced(round, &mut sim_node.outbox);
            }
            node.tick(now);
            let mut outbox = std::mem::take(&mut self.nodes[i].outbox);
            let mut early = Vec::new();
            let mut send_early = |messages: Vec<Message>| early.extend(messages);
            let processed =
                self.nodes[i].node.as_mut().map_or(Ok(()), |n| n.process_ready(&mut outbox, &mut send_early));
            outbox.messages.splice(0..0, early);
            if let Err(error) = processed {
                self.fail(format!("{} failed: {error}", self.nodes[i].member.name));
            }
            self.route(i, outbox);
        }
        self.collect_replies();
        self.collect_commits();
        self.check_reads();
        self.check();
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut later = Vec::new();
        for flight in self.network.drain(..) {
            if flight.at <= now { due.push(flight) } else { later.push(flight) }
        }
        self.network = later;
        due.sort_by_key(|flight| (flight.at, flight.seq));
        for flight in due {
            let (from, to) = (flight.message.from, flight.message.to);
            if self.cut.contains(&(from, to)) {
                continue;
            }
            let Some(i) = self.index_of(to) else { continue };
            let sim_node = &mut self.nodes[i];
            if let Some(node) = sim_node.node.as_mut() {
                node.step(&flight.from, flight.message, &mut sim_node.outbox);
            }
        }
    }

    fn route(&mut self, i: usize, mut outbox: Outbox) {
        if let Some(round) = outbox.sync.take() {
            // Never before an earlier request: syncs complete in order.
            let earliest = self.nodes[i].syncs.iter().map(|(at, _)| *at).max().unwrap_or(self.now);
            let at = earliest.max(self.now + self.rng.below(3));
            self.nodes[i].syncs.push((at, round));
        }
        if let Some(fetch) = outbox.fetch.take() {
            self.fetches.push((i, fetch));
        }
        let from = self.identity(i);
        for message in outbox.messages {
            let dropped = self.faults && self.rng.chance(50);
            if message.get_msg_type() == MessageType::MsgSnapshot {
                // As a transport does: delivered to the peer, or failed.
                let to = message.to;
                self.node_mut(i).report_snapshot(to, !dropped);
            }
            if dropped {
                continue;
            }
            let copies = if self.faults && self.rng.chance(20) { 2 } else { 1 };
            for _ in 0..copies {
                self.send(from.clone(), message.clone());
            }
            if self.faults && self.rng.chance(30) {
                let (from, message) = self.mutate(from.clone(), message);
                self.mutated += 1;
                self.send(from, message);
            }
        }
    }

    fn send(&mut self, from: PeerId, message: Message) {
        self.seq += 1;
        let delay = 1 + self.rng.below(if self.faults { 4 } else { 2 });
        self.network.push(InFlight { at: self.now + delay, seq: self.seq, from, message });
    }

    /// Whether the node `id` is sent to has a cluster id.
    fn knows_its_cluster(&self, id: u64) -> bool {
        let node = self.index_of(id).and_then(|i| self.nodes[i].node.as_ref());
        node.is_some_and(|node| node.store().cluster_id().is_some())
    }

    /// Node `i` as its transport names it on a call.
    fn identity(&self, i: usize) -> PeerId {
        let sim_node = &self.nodes[i];
        PeerId {
            name: sim_node.member.name.clone(),
            member_id: sim_node.member.id,
            cluster_id: sim_node.node.as_ref().and_then(|node| node.store().cluster_id()),
            rpc_addr: sim_node.member.rpc_addr.clone(),
        }
    }

    /// Rewrites one field of a message (or of its sender's identity) into what
    /// the gate must refuse — or, for an unknown sender, into what Raft must
    /// withstand.
    fn mutate(&mut self, mut from: PeerId, mut message: Message) -> (PeerId, Message) {
        let far = [u64::MAX, u64::MAX - 1, MAX_TERM + 1, u64::MAX / 2];
        let value = far[self.rng.below(far.len() as u64) as usize];
        match self.rng.below(10) {
            0 => message.term = value,
            1 => message.index = value,
            2 => message.commit = value,
            3 => message.log_term = value,
            4 => {
                // An unknown sender of this cluster.
                message.from = self.rng.next().max(1);
                from = PeerId { name: "intruder".into(), member_id: message.from, ..from };
            }
            5 => message.to = self.rng.next().max(1),
            // Another cluster's id — to a node that has one: a new node belongs to
            // the first cluster that contacts it (as a new etcd member does).
            6 if self.knows_its_cluster(message.to) => from.cluster_id = Some(ClusterId::mint()),
            7 => match message.entries.len() {
                0 => message.reject_hint = value,
                len => {
                    let entry = &mut message.entries[self.rng.below(len as u64) as usize];
                    if self.rng.chance(500) {
                        entry.index = entry.index.wrapping_add(1)
                    } else {
                        entry.term = value
                    }
                }
            },
            8 if message.get_msg_type() == MessageType::MsgSnapshot => {
                let metadata = message.mut_snapshot().mut_metadata();
                match self.rng.below(3) {
                    0 => metadata.index = value,
                    1 => metadata.term = value,
                    _ => metadata.mut_conf_state().voters.clear(),
                }
            }
            _ => message.commit_term = value,
        }
        trace(|| format!("mutated {:?} from {} to {}", message.get_msg_type(), message.from, message.to));
        (from, message)
    }

    /// Carries out snapshot fetches: in random chunks, sometimes cut short.
    fn run_fetches(&mut self) {
        for (i, fetch) in std::mem::take(&mut self.fetches) {
            let source =
                self.index_of(fetch.from).and_then(|s| self.nodes[s].node.as_ref().map(committed_records));
            let reachable = !self.cut.contains(&(self.nodes[i].member.id, fetch.from));
            let Some(node) = self.nodes[i].node.as_mut() else { continue };
            let Some(source) = source.filter(|_| reachable) else {
                node.fetch_failed(fetch.id, "unreachable");
                continue;
            };
            let mut next = fetch.start.max(source.lowest());
            if next >= fetch.end
                && let Err(error) = node.fetched(fetch.id, next, &[], &[])
            {
                let name = self.nodes[i].member.name.clone();
                self.fail(format!("{name} cannot store fetched records: {error}"));
            }
            let mut interrupted = false;
            while next < fetch.end {
                if self.faults && self.rng.chance(100) {
                    interrupted = true;
                    break;
                }
                let bytes = 64 + self.rng.below(4 << 10);
                let records = match source.read_batch_blocking(next, bytes) {
                    Ok(records) if !records.is_empty() => records,
                    _ => {
                        interrupted = true;
                        break;
                    }
                };
                let first = records[0].offset;
                let (values, timestamps): (Vec<Bytes>, Vec<u64>) = records
                    .into_iter()
                    .take_while(|r| r.offset < fetch.end)
                    .map(|r| (r.value, r.timestamp_ms))
                    .unzip();
                next = first + values.len() as u64;
                if let Err(error) = node.fetched(fetch.id, first, &values, &timestamps) {
                    let name = self.nodes[i].member.name.clone();
                    self.fail(format!("{name} cannot store fetched records: {error}"));
                }
            }
            if interrupted {
                node.fetch_failed(fetch.id, "interrupted");
            }
        }
    }

    fn collect_replies(&mut self) {
        let mut still = Vec::new();
        for mut pending in std::mem::take(&mut self.pending) {
            match pending.reply.try_recv() {
                Ok(Ok(first)) => {
                    let end = first + pending.values.len() as u64;
                    if let Some(node) = &self.nodes[pending.target].node
                        && *node.committed().borrow() < end
                    {
                        self.fail(format!("{first}..{end} acknowledged before it is readable there"));
                    }
                    for (offset, value) in (first..).zip(pending.values) {
                        if let Some(previous) = self.acked.insert(offset, value.clone())
                            && previous != value
                        {
                            self.fail(format!("offset {offset} acknowledged for {previous:?} and {value:?}"));
                        }
                        if let Some(committed) = self.history.get(&offset)
                            && *committed != value
                        {
                            self.fail(format!(
                                "{value:?} acknowledged at {offset}, which holds {committed:?}"
                            ));
                        }
                    }
                }
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {}
                Err(oneshot::error::TryRecvError::Empty) => still.push(pending),
            }
        }
        self.pending = still;
    }

    fn check(&mut self) {
        for i in 0..self.size() {
            let Some(node) = self.nodes[i].node.as_ref() else { continue };
            let name = &self.nodes[i].member.name;
            if node.is_leader()
                && let Some(other) =
                    self.leaders.insert(node.term(), node.id()).filter(|other| *other != node.id())
            {
                self.fail(format!("two leaders in term {}: {other} and {}", node.term(), node.id()));
            }
            if node.applied() < self.nodes[i].applied {
                self.fail(format!(
                    "{name}'s applied index went back from {} to {}",
                    self.nodes[i].applied,
                    node.applied()
                ));
            }
            let source = committed_records(node);
            let records = Arc::clone(&source.log);
            let applied = node.applied();
            let start = self.nodes[i].checked.max(source.lowest());
            let next = source.next();
            for offset in start..next {
                let (value, timestamp) = match source.read_blocking(offset) {
                    Ok(record) => (record.value, record.timestamp_ms),
                    Err(error) => self.fail(format!("{name} cannot read {offset}: {error}")),
                };
                // One timestamp per record on every node, never going back.
                if let Some(first) = self.timestamps.insert(offset, timestamp)
                    && first != timestamp
                {
                    self.fail(format!(
                        "{name} serves offset {offset} at {timestamp} ms, another node at {first}"
                    ));
                }
                let before = self.timestamps.range(..offset).next_back().map(|(_, ts)| *ts);
                if timestamp == 0 || before.is_some_and(|before| before > timestamp) {
                    self.fail(format!("{name} serves offset {offset} at {timestamp} ms, after {before:?}"));
                }
                // No value is stored twice (an idempotent resend least of all).
                if let Some(other) = self.stored_at.insert(value.clone(), offset)
                    && other != offset
                {
                    self.fail(format!("{value:?} is stored at {other} and at {offset}"));
                }
                match self.history.get(&offset) {
                    Some(committed) if *committed != value => {
                        self.fail(format!("{name} holds {value:?} at {offset}, another node {committed:?}"))
                    }
                    Some(_) => {}
                    None => {
                        if let Some(acked) = self.acked.get(&offset)
                            && *acked != value
                        {
                            self.fail(format!("{name} holds {value:?} at acknowledged {offset} ({acked:?})"));
                        }
                        self.history.insert(offset, value);
                    }
                }
            }
            // Served records (committed, published) carry one term on every node.
            let served = *node.committed().borrow();
            let start = self.nodes[i].terms_checked.max(source.lowest());
            for offset in start..served {
                let term = node.store().terms().term_of(offset);
                if term == 0 {
                    self.fail(format!("{name} serves offset {offset} without its term: {:?} (committed {served}, lowest {})", node.store().terms().ranges(), records.lowest_offset()));
                }
                if let Some(first) = self.terms.insert(offset, term)
                    && first != term
                {
                    self.fail(format!(
                        "{name} serves offset {offset} in term {term}, another node in {first}: {:?}",
                        node.store().terms().ranges()
                    ));
                }
            }
            self.nodes[i].checked = next;
            self.nodes[i].applied = applied;
            self.nodes[i].terms_checked = self.nodes[i].terms_checked.max(served);
        }
    }

    /// Heals everything, restarts every node and runs until all agree.
    fn settle(&mut self) {
        self.faults = false;
        self.cut.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() {
                self.start(i, false);
            }
        }
        for _ in 0..5_000 {
            self.step();
            if self.now.is_multiple_of(10) {
                self.reconcile();
            }
            if self.pending.is_empty() && self.agreed() {
                break;
            }
        }
        if !self.agreed() {
            let states: Vec<String> = self
                .alive()
                .map(|(i, n)| {
                    format!(
                        "{} leader={} applied={} next={}",
                        self.nodes[i].member.name,
                        n.is_leader(),
                        n.applied(),
                        n.applied_end()
                    )
                })
                .collect();
            self.fail(format!("the cluster did not settle: {states:?}"));
        }
        let next = self.alive().map(|(_, n)| n.applied_end()).next().unwrap_or(0);
        if let Some((offset, _)) = self.acked.range(next..).next() {
            self.fail(format!("acknowledged offset {offset} is lost (the log ends at {next})"));
        }
        self.check_positions();
    }

    /// Every node applied what the leader committed and holds the same
    /// records, and every slot's current member (not an old one) votes.
    fn agreed(&self) -> bool {
        let Some(leader) = self.leader() else { return false };
        let Some(leader) = self.nodes[leader].node.as_ref() else { return false };
        let commit = leader.store().hard_state().commit.max(leader.applied());
        let voters = leader.store().conf_state().voters;
        let replaced = self.nodes[..self.size()]
            .iter()
            .all(|n| voters.contains(&n.member.id) && n.old_ids.iter().all(|old| !voters.contains(old)));
        replaced
            && self.alive().all(|(_, n)| n.applied() >= commit && n.applied_end() == leader.applied_end())
    }
}

fn run(seed: u64, size: usize, steps: u64) {
    // A panic inside raft-rs (an invariant it asserts) must name the seed too.
    let outcome = std::panic::catch_unwind(|| simulate(seed, size, steps));
    if let Err(panic) = outcome {
        eprintln!("replay: PROGLOG_SIM_SEED={seed} PROGLOG_SIM_NODES={size}");
        std::panic::resume_unwind(panic);
    }
}

fn simulate(seed: u64, size: usize, steps: u64) {
    let mut sim = Sim::new(seed, size);
    sim.form();
    sim.faults = true;
    for _ in 0..steps {
        sim.step();
    }
    sim.settle();
    assert!(!sim.acked.is_empty(), "seed {seed}: nothing was acknowledged");
    assert!(sim.reads_checked > 0, "seed {seed}: no linearizable read completed");
    assert!(!sim.positions.is_empty(), "seed {seed}: no consumer position was acknowledged");
    assert!(sim.producers.iter().all(|p| p.acked > 0), "seed {seed}: a producer never got an answer");
    // Every node agrees on the lowest offset (check_positions compares the
    // whole replicated state), and retention did cut.
    let lowest = sim.alive().map(|(_, node)| node.store().machine().lowest()).max().unwrap_or(0);
    assert!(lowest > 0, "seed {seed}: retention never cut");
    // The foreign node kept sending to our members: every message refused.
    let refused = |reason: Reason| -> u64 {
        sim.nodes[..sim.size()]
            .iter()
            .flat_map(|n| n.rejections.snapshot())
            .filter(|(counted, _)| *counted == reason)
            .map(|(_, count)| count)
            .sum()
    };
    assert!(refused(Reason::ClusterId) > 0, "seed {seed}: the foreign node's messages were never refused");
    trace(|| format!("seed {seed}: {} wipes, {} messages mutated", sim.wipes, sim.mutated));
}

fn seeds(size: usize, default_count: u64) -> Vec<u64> {
    let env = |key: &str| std::env::var(key).ok().and_then(|value| value.parse::<u64>().ok());
    if let Some(seed) = env("PROGLOG_SIM_SEED") {
        return if env("PROGLOG_SIM_NODES").is_none_or(|nodes| nodes == size as u64) {
            vec![seed]
        } else {
            vec![]
        };
    }
    let count = env("PROGLOG_SIM_SEEDS").unwrap_or(default_count);
    (0..count).map(|i| 1_000 * size as u64 + i).collect()
}

#[test]
fn three_node_clusters_stay_consistent_under_faults() {
    for seed in seeds(3, 24) {
        run(seed, 3, 1_500);
    }
}

#[test]
fn five_node_clusters_stay_consistent_under_faults() {
    for seed in seeds(5, 12) {
        run(seed, 5, 1_500);
    }
}

mod gate_never_panics {
    //! The gate itself: arbitrary peer messages — any kind, any field, any
    //! sender identity — stepped into the nodes of a formed cluster, between
    //! normal rounds. No node may panic or fail.

    use proptest::prelude::*;
    use raft::eraftpb::{ConfChangeType, EntryType, Message, MessageType};

    use super::super::codec::{ClusterId, PeerId, conf_change, encode_batch};
    use super::Sim;
    use bytes::Bytes;
    use protobuf::{Message as _, ProtobufEnum as _};

    /// A number from the edges Raft cares about, or a small one.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => 0..40u64,
            1 => Just(u64::MAX),
            1 => Just(u64::MAX - 1),
            1 => Just(1u64 << 62),
            1 => Just((1u64 << 62) + 1),
            1 => any::<u64>(),
        ]
    }

    fn entry_data() -> impl Strategy<Value = (i32, Vec<u8>, Vec<u8>)> {
        prop_oneof![
            Just((0, Vec::new(), Vec::new())),
            (number(), 0..4usize).prop_map(|(first, count)| (
                0,
                encode_batch(first, Default::default(), &vec![Bytes::from_static(b"v"); count]),
                Vec::new()
            )),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(|data| (0, data, Vec::new())),
            (number(), 0..3i32).prop_map(|(id, kind)| {
                let kind = ConfChangeType::from_i32(kind).unwrap_or(ConfChangeType::AddNode);
                let change = conf_change(id, kind).write_to_bytes().unwrap_or_default();
                (2, change, br#"{"id":7,"name":"x","rpc_addr":"x:1"}"#.to_vec())
            }),
            Just((1, Vec::new(), Vec::new())),
        ]
    }

    /// A message of any kind, fields from [`number`], entries of any shape.
    /// `ids` (0..4) pick a sender and receiver among the cluster's members, an
    /// unknown id and 0.
    fn message() -> impl Strategy<Value = (usize, usize, Message, u8)> {
        let fields = (number(), number(), number(), number(), number(), number(), any::<bool>());
        let entries = proptest::collection::vec((number(), number(), entry_data()), 0..4);
        let snapshot = (number(), number(), proptest::collection::vec(0..5usize, 0..4), any::<bool>());
        (0..20i32, 0..5usize, 0..5usize, fields, entries, snapshot, 0..4u8).prop_map(
            |(
                kind,
                from,
                to,
                (term, index, log_term, commit, commit_term, reject_hint, reject),
                entries,
                snapshot,
                identity,
            )| {
                let mut message = Message {
                    term,
                    index,
                    log_term,
                    commit,
                    commit_term,
                    reject_hint,
                    reject,
                    ..Message::default()
                };
                message.set_msg_type(MessageType::from_i32(kind).unwrap_or(MessageType::MsgHeartbeat));
                for (index, term, (kind, data, context)) in entries {
                    let mut entry = raft::eraftpb::Entry {
                        index,
                        term,
                        data: data.into(),
                        context: context.into(),
                        ..Default::default()
                    };
                    entry.set_entry_type(EntryType::from_i32(kind).unwrap_or(EntryType::EntryNormal));
                    message.entries.push(entry);
                }
                let (index, term, voters, good_data) = snapshot;
                let metadata = message.mut_snapshot().mut_metadata();
                metadata.index = index;
                metadata.term = term;
                metadata.mut_conf_state().voters = voters.into_iter().map(|v| v as u64).collect();
                if good_data {
                    message.mut_snapshot().data = br#"{"end_offset":3,"members":[]}"#.to_vec().into();
                }
                (from, to, message, identity)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_peer_messages_never_panic(seed in 0u64..1_000, messages in proptest::collection::vec(message(), 1..40)) {
            let mut sim = Sim::new(seed, 3);
            sim.form();
            for (from, to, mut message, identity) in messages {
                let ids: Vec<u64> = (0..3).map(|i| sim.nodes[i].member.id).chain([0xdead_beef, 0]).collect();
                message.from = ids[from];
                message.to = ids[to];
                let sender = if from < 3 { sim.identity(from) } else { PeerId::default() };
                let peer = match identity {
                    0 => sender,
                    1 => PeerId { member_id: message.from, ..sender },
                    2 => PeerId { cluster_id: Some(ClusterId::mint()), ..sender },
                    _ => PeerId { name: "intruder".into(), member_id: message.from, ..sender },
                };
                let target = sim.nodes.iter().position(|n| n.member.id == message.to).unwrap_or(to % 3);
                let sim_node = &mut sim.nodes[target];
                if let Some(node) = sim_node.node.as_mut() {
                    node.step(&peer, message, &mut sim_node.outbox);
                }
                sim.step();
            }
            for _ in 0..50 {
                sim.step();
            }
        }
    }
}

mod read_index_gate {
    //! Read-index requests and answers a peer forges: refused and counted, and
    //! a flood from one peer is cut at its per-tick budget.

    use raft::eraftpb::{Entry, Message, MessageType};

    use super::super::gate::Reason;
    use super::super::reads::{PEER_READS_PER_TICK, read_context};
    use super::Sim;

    fn read_index(from: u64, to: u64, context: Vec<u8>) -> Message {
        let mut message = Message { from, to, ..Message::default() };
        message.set_msg_type(MessageType::MsgReadIndex);
        message.entries.push(Entry { data: context.into(), ..Entry::default() });
        message
    }

    /// Steps `message` from node `from` into node `to`; the count of `reason`
    /// refusals at `to` afterwards.
    fn step(sim: &mut Sim, from: usize, to: usize, message: Message, reason: Reason) -> u64 {
        let peer = sim.identity(from);
        let slot = &mut sim.nodes[to];
        slot.node.as_mut().expect("alive").step(&peer, message, &mut slot.outbox);
        refused(sim, to, reason)
    }

    fn refused(sim: &Sim, node: usize, reason: Reason) -> u64 {
        let counts = sim.nodes[node].rejections.snapshot();
        counts.into_iter().find(|(counted, _)| *counted == reason).map_or(0, |(_, count)| count)
    }

    #[test]
    fn forged_read_index_messages_are_refused_and_a_flood_is_cut() {
        let mut sim = Sim::new(7, 3);
        sim.form();
        let leader = sim.leader().expect("a leader");
        let follower = (leader + 1) % 3;
        let other = (leader + 2) % 3;
        let (leader_id, follower_id, other_id) =
            (sim.nodes[leader].member.id, sim.nodes[follower].member.id, sim.nodes[other].member.id);

        // Another node's context: a reply would go to the wrong node.
        let stolen = read_index(follower_id, leader_id, read_context(other_id, 1));
        assert_eq!(step(&mut sim, follower, leader, stolen, Reason::ReadIndex), 1);
        // No entry (raft-rs would index it), two entries, a short context.
        let mut empty = read_index(follower_id, leader_id, Vec::new());
        empty.entries.clear();
        assert_eq!(step(&mut sim, follower, leader, empty, Reason::ReadIndex), 2);
        let mut two = read_index(follower_id, leader_id, read_context(follower_id, 1));
        two.entries.push(Entry::default());
        assert_eq!(step(&mut sim, follower, leader, two, Reason::ReadIndex), 3);
        let short = read_index(follower_id, leader_id, vec![0; 8]);
        assert_eq!(step(&mut sim, follower, leader, short, Reason::ReadIndex), 4);
        // A term (raft-rs sends requests without one).
        let termed = Message { term: 1, ..read_index(follower_id, leader_id, read_context(follower_id, 2)) };
        assert_eq!(step(&mut sim, follower, leader, termed, Reason::Term), 1);
        // An answer naming another node, or not from the leader.
        let mut answer = Message { from: leader_id, to: follower_id, ..Message::default() };
        answer.term = sim.nodes[follower].node.as_ref().expect("alive").term();
        answer.set_msg_type(MessageType::MsgReadIndexResp);
        answer.entries.push(Entry { data: read_context(other_id, 1).into(), ..Entry::default() });
        assert_eq!(step(&mut sim, leader, follower, answer, Reason::ReadIndex), 1);

        // Honest requests pass, up to the per-tick budget; the rest are counted.
        let before = refused(&sim, leader, Reason::ReadIndex);
        for number in 0..u64::from(PEER_READS_PER_TICK) + 10 {
            let request = read_index(follower_id, leader_id, read_context(follower_id, 100 + number));
            step(&mut sim, follower, leader, request, Reason::ReadIndex);
        }
        assert_eq!(refused(&sim, leader, Reason::ReadIndex) - before, 10);
        for _ in 0..50 {
            sim.step();
        }
    }
}
