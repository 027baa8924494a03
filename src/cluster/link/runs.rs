//! Which run of each peer blade is on the link: the instance id its
//! [`Message::Hello`](crate::cluster::codec::Message::Hello) names on each
//! connection, and the connections numbered, so that a peer that comes
//! back as a new process is told from one whose link merely dropped.
//! Sans-IO, like the link: the driver feeds it the link's events.

use std::collections::HashMap;

/// The runs of the peers, as their connections and Hellos show them.
#[derive(Debug, Default)]
pub struct PeerRuns {
    /// By lowercased blade id.
    peers: HashMap<String, Run>,
}

#[derive(Debug, Default)]
struct Run {
    /// The number of the latest connection (1 for the first).
    link: u64,
    /// The instance id of the latest Hello, if any came.
    instance: Option<u64>,
}

impl PeerRuns {
    /// The runs of no peer yet.
    pub fn new() -> PeerRuns {
        PeerRuns::default()
    }

    /// A new connection to `peer` is up: its number (they grow, from 1).
    pub fn connected(&mut self, peer: &str) -> u64 {
        let run = self.peers.entry(peer.to_ascii_lowercase()).or_default();
        run.link += 1;
        run.link
    }

    /// `peer`'s Hello on its latest connection named run `instance`.
    /// Returns that connection's number when `peer` restarted: an earlier
    /// connection's Hello named another run. The first Hello heard from a
    /// peer tells nothing (this blade holds nothing of a run it never
    /// heard of, or it restarted itself); one of the same run is a
    /// reconnection (a link flap), which ends nothing.
    pub fn hello(&mut self, peer: &str, instance: u64) -> Option<u64> {
        let run = self.peers.entry(peer.to_ascii_lowercase()).or_default();
        let before = run.instance.replace(instance);
        (before.is_some_and(|b| b != instance)).then_some(run.link)
    }

    /// `peer` closed its link because it is stopping, so its run is over:
    /// the connection number after its latest one, below which every
    /// grant ends (as [`PeerRuns::hello`]'s number does on a restart).
    pub fn stopped(&self, peer: &str) -> u64 {
        self.peers
            .get(&peer.to_ascii_lowercase())
            .map_or(0, |run| run.link)
            + 1
    }
}

#[cfg(test)]
mod tests {
    use super::PeerRuns;

    #[test]
    fn only_a_new_instance_after_another_is_a_restart() {
        let mut runs = PeerRuns::new();
        assert_eq!(runs.connected("blade-1"), 1);
        assert_eq!(runs.hello("blade-1", 7), None, "the first run heard");
        // A flap: the same run on a new connection.
        assert_eq!(runs.connected("blade-1"), 2);
        assert_eq!(runs.hello("blade-1", 7), None);
        // A repeated Hello on the same connection.
        assert_eq!(runs.hello("blade-1", 7), None);
        // A restart, told on connection 3; ids compare without case.
        assert_eq!(runs.connected("Blade-1"), 3);
        assert_eq!(runs.hello("blade-1", 8), Some(3));
        assert_eq!(runs.hello("blade-1", 8), None, "told once");
        // Peers are apart.
        assert_eq!(runs.connected("blade-2"), 1);
        assert_eq!(runs.hello("blade-2", 8), None);
        assert_eq!(runs.connected("blade-2"), 2);
        assert_eq!(runs.hello("blade-2", 9), Some(2));
        // A stop ends every connection so far; the next one is the
        // number it gives.
        assert_eq!(runs.stopped("Blade-2"), 3);
        assert_eq!(runs.connected("blade-2"), 3);
        assert_eq!(runs.stopped("blade-9"), 1, "never heard of");
    }
}
