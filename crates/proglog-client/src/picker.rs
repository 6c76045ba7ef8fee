//! Where each call goes, given the servers a resolver knows: produce to the
//! leader, consume round-robin over the followers (the leader when there are
//! none), anything else to any server.

use std::sync::atomic::{AtomicUsize, Ordering};

use proglog_api::v1::Server;

/// The kind of call to place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Produce / ProduceStream: the leader.
    Produce,
    /// Consume / ConsumeStream: a follower, in turn.
    Consume,
    /// Anything else (GetServers): any server.
    Other,
}

/// Picks a server for each call from one view of the cluster.
#[derive(Debug, Default)]
pub struct Picker {
    servers: Vec<Server>,
    next: AtomicUsize,
}

impl Picker {
    /// A picker over `servers` (as GetServers lists them).
    pub fn new(servers: Vec<Server>) -> Self {
        Self { servers, next: AtomicUsize::new(0) }
    }

    /// A picker over a new list of `servers` that goes on with `previous`'s turn
    /// (a refresh does not send the next consume back to the first follower).
    pub fn succeeding(previous: &Picker, servers: Vec<Server>) -> Self {
        Self { servers, next: AtomicUsize::new(previous.next.load(Ordering::Relaxed)) }
    }

    /// The servers it picks from.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The server for a `call`, or `None` when none fits (no leader for a
    /// produce, no server at all).
    pub fn pick(&self, call: Call) -> Option<&Server> {
        let leader = self.servers.iter().find(|server| server.is_leader);
        match call {
            Call::Produce => leader,
            Call::Consume => {
                let followers: Vec<&Server> =
                    self.servers.iter().filter(|server| !server.is_leader).collect();
                if followers.is_empty() {
                    return leader;
                }
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                Some(followers[turn % followers.len()])
            }
            Call::Other => leader.or_else(|| self.servers.first()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: &str, is_leader: bool) -> Server {
        Server { id: id.into(), rpc_addr: format!("{id}:8400"), is_leader }
    }

    fn ids(picker: &Picker, call: Call, n: usize) -> Vec<String> {
        (0..n).map(|_| picker.pick(call).map(|s| s.id.clone()).unwrap_or_default()).collect()
    }

    #[test]
    fn produce_goes_to_the_leader_and_consume_round_robins_over_followers() {
        let picker = Picker::new(vec![server("a", false), server("b", true), server("c", false)]);
        assert_eq!(ids(&picker, Call::Produce, 3), ["b", "b", "b"]);
        // The order is pinned: followers in the order GetServers listed them.
        assert_eq!(ids(&picker, Call::Consume, 5), ["a", "c", "a", "c", "a"]);
        assert_eq!(ids(&picker, Call::Other, 2), ["b", "b"]);
    }

    #[test]
    fn a_new_list_goes_on_with_the_turn() {
        let servers = vec![server("a", false), server("b", true), server("c", false)];
        let picker = Picker::new(servers.clone());
        assert_eq!(ids(&picker, Call::Consume, 1), ["a"]);
        let refreshed = Picker::succeeding(&picker, servers);
        assert_eq!(ids(&refreshed, Call::Consume, 2), ["c", "a"]);
    }

    #[test]
    fn without_followers_consume_goes_to_the_leader() {
        let picker = Picker::new(vec![server("solo", true)]);
        assert_eq!(ids(&picker, Call::Consume, 2), ["solo", "solo"]);
    }

    #[test]
    fn nothing_fits_without_a_leader_or_servers() {
        let leaderless = Picker::new(vec![server("a", false), server("b", false)]);
        assert!(leaderless.pick(Call::Produce).is_none());
        assert_eq!(ids(&leaderless, Call::Consume, 3), ["a", "b", "a"]);
        assert_eq!(ids(&leaderless, Call::Other, 1), ["a"]);
        let empty = Picker::default();
        for call in [Call::Produce, Call::Consume, Call::Other] {
            assert!(empty.pick(call).is_none());
        }
    }
}
