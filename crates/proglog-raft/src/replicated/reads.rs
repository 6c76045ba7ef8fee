//! Linearizable reads (Raft's ReadIndex, §6.4 of Ongaro's thesis): a reader
//! asks for the leader's commit index *after* the leader confirmed, with a
//! heartbeat round acknowledged by a quorum, that it still leads; once this node
//! has applied up to that index, a read here sees every record acknowledged
//! before the request — on any node.
//!
//! Requests that arrive while one is being answered wait and share the next
//! one: each asks raft-rs once (`RawNode::read_index`) under a context naming
//! this node and a request number. A follower's request travels to the leader
//! as `MsgReadIndex` and comes back as `MsgReadIndexResp`; raft-rs drops it
//! silently when no leader is known or the leader has not committed an entry of
//! its term yet, so an unanswered request is asked again after an election
//! timeout, and a read fails after two (as an append waits for a leader).

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use crate::LogError;

/// Replies with the index this node must have applied before the read.
pub(crate) type ReadReply = oneshot::Sender<Result<u64, LogError>>;

/// Bytes of a read request's context: the asking node's member id, then the
/// request's number (both little-endian).
pub(crate) const READ_CONTEXT_BYTES: usize = 16;

/// Read-index requests a peer may send per tick, at most (an honest node has
/// one in flight at a time: at most one per round trip to the leader). More are
/// dropped and counted.
pub(crate) const PEER_READS_PER_TICK: u32 = 256;

/// The context of request `number` of node `member_id`.
pub(crate) fn read_context(member_id: u64, number: u64) -> Vec<u8> {
    let mut context = Vec::with_capacity(READ_CONTEXT_BYTES);
    context.extend_from_slice(&member_id.to_le_bytes());
    context.extend_from_slice(&number.to_le_bytes());
    context
}

/// The member id and request number a context names, if it is one.
pub(crate) fn parse_read_context(context: &[u8]) -> Option<(u64, u64)> {
    let bytes: &[u8; READ_CONTEXT_BYTES] = context.try_into().ok()?;
    let (id, number) = bytes.split_at(8);
    Some((u64::from_le_bytes(id.try_into().ok()?), u64::from_le_bytes(number.try_into().ok()?)))
}

/// A reader, and the tick it arrived at.
type Reader = (u64, ReadReply);

/// This node's read-index requests, and its peers' request counts.
#[derive(Default)]
pub(crate) struct Reads {
    /// Readers whose request is not asked yet.
    waiting: Vec<Reader>,
    /// Asked requests by number: the tick asked, and their readers.
    asked: BTreeMap<u64, (u64, Vec<Reader>)>,
    /// Requests asked so far (the next one's number).
    numbers: u64,
    /// Read-index requests each peer sent this tick.
    from_peers: BTreeMap<u64, u32>,
}

impl Reads {
    pub(crate) fn add(&mut self, now: u64, reply: ReadReply) {
        self.waiting.push((now, reply));
    }

    /// With readers waiting, and nothing asked: the context of a new request
    /// for them all.
    pub(crate) fn ask(&mut self, member_id: u64, now: u64) -> Option<Vec<u8>> {
        if self.waiting.is_empty() || !self.asked.is_empty() {
            return None;
        }
        let number = self.numbers;
        self.numbers += 1;
        self.asked.insert(number, (now, std::mem::take(&mut self.waiting)));
        Some(read_context(member_id, number))
    }

    /// raft-rs answered request `number` with `index`.
    pub(crate) fn answered(&mut self, number: u64, index: u64) {
        for (_, reply) in self.asked.remove(&number).map(|(_, readers)| readers).unwrap_or_default() {
            let _ = reply.send(Ok(index));
        }
    }

    /// A tick: requests unanswered for `retry` ticks are asked again, readers
    /// waiting `give_up` ticks fail with `error`, and peers' counts start again.
    pub(crate) fn tick(&mut self, now: u64, retry: u64, give_up: u64, error: impl Fn() -> LogError) {
        let stale: Vec<u64> =
            self.asked.iter().filter(|(_, (asked, _))| now >= asked + retry).map(|(n, _)| *n).collect();
        for number in stale {
            if let Some((_, readers)) = self.asked.remove(&number) {
                self.waiting.extend(readers);
            }
        }
        let (expired, waiting) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition::<Vec<Reader>, _>(|(arrived, _)| now >= arrived + give_up);
        self.waiting = waiting;
        for (_, reply) in expired {
            let _ = reply.send(Err(error()));
        }
        self.from_peers.clear();
    }

    /// Counts a request from `peer`: `false` once it sent more than
    /// [`PEER_READS_PER_TICK`] this tick.
    pub(crate) fn count_peer(&mut self, peer: u64) -> bool {
        let count = self.from_peers.entry(peer).or_default();
        *count = count.saturating_add(1);
        *count <= PEER_READS_PER_TICK
    }

    /// Fails every reader (the node stops).
    pub(crate) fn fail_all(&mut self, error: &LogError) {
        let asked = std::mem::take(&mut self.asked).into_values().flat_map(|(_, readers)| readers);
        for (_, reply) in std::mem::take(&mut self.waiting).into_iter().chain(asked) {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(reads: &mut Reads, now: u64) -> oneshot::Receiver<Result<u64, LogError>> {
        let (reply, answer) = oneshot::channel();
        reads.add(now, reply);
        answer
    }

    #[test]
    fn readers_share_one_request_and_later_ones_wait_for_the_next() {
        let mut reads = Reads::default();
        let mut first = reader(&mut reads, 0);
        let mut second = reader(&mut reads, 0);
        let context = reads.ask(7, 0).expect("a request");
        assert_eq!(parse_read_context(&context), Some((7, 0)));
        let mut third = reader(&mut reads, 0);
        assert_eq!(reads.ask(7, 0), None, "one request at a time");
        reads.answered(0, 41);
        assert_eq!(first.try_recv().ok(), Some(Ok(41)));
        assert_eq!(second.try_recv().ok(), Some(Ok(41)));
        assert!(third.try_recv().is_err(), "asked after the request: not answered by it");
        let context = reads.ask(7, 0).expect("the next request");
        assert_eq!(parse_read_context(&context), Some((7, 1)));
        reads.answered(1, 42);
        assert_eq!(third.try_recv().ok(), Some(Ok(42)));
    }

    #[test]
    fn an_unanswered_request_is_asked_again_and_its_readers_give_up_in_time() {
        let mut reads = Reads::default();
        let mut answer = reader(&mut reads, 0);
        reads.ask(7, 0).expect("a request");
        let unavailable = || LogError::Unavailable("no".into());
        reads.tick(5, 10, 20, unavailable);
        assert_eq!(reads.ask(7, 5), None, "still waiting for the answer");
        reads.tick(10, 10, 20, unavailable);
        let context = reads.ask(7, 10).expect("asked again");
        assert_eq!(parse_read_context(&context), Some((7, 1)));
        reads.answered(0, 1); // the first answer, too late: nobody waits for it
        assert!(answer.try_recv().is_err());
        reads.tick(20, 10, 20, unavailable);
        assert!(matches!(answer.try_recv(), Ok(Err(LogError::Unavailable(_)))));
    }

    #[test]
    fn a_peer_is_counted_per_tick() {
        let mut reads = Reads::default();
        assert!((0..PEER_READS_PER_TICK).all(|_| reads.count_peer(3)));
        assert!(!reads.count_peer(3));
        assert!(reads.count_peer(4));
        reads.tick(1, 10, 20, || LogError::Unavailable("no".into()));
        assert!(reads.count_peer(3));
    }

    #[test]
    fn contexts_of_other_lengths_are_not_requests() {
        assert_eq!(parse_read_context(&[0; 15]), None);
        assert_eq!(parse_read_context(&[0; 17]), None);
        assert_eq!(parse_read_context(&read_context(u64::MAX, 3)), Some((u64::MAX, 3)));
    }
}
