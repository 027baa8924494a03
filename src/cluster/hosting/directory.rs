//! Which peer blade each remote agent is logged in on.

use std::collections::{BTreeSet, HashMap};

use super::same_blade;
use crate::cluster::codec::{DirectoryEntry, Message};

/// Which peer blade each remote agent is logged in on, from the peers'
/// announcements. The local blade's own agents are not in it.
///
/// An entry is a hint: a stale one (the agent moved or logged out and the
/// withdrawal is late) is caught when the target refuses with 404 or 480,
/// and the source then asks every peer ([`Source::host`](super::Source::host)).
#[derive(Debug, Default, Clone)]
pub struct Directory {
    by_extension: HashMap<String, (String, u64)>,
    peers: BTreeSet<String>,
}

impl Directory {
    /// An empty directory with no peer up.
    pub fn new() -> Directory {
        Directory::default()
    }

    /// Applies a directory notice from `from`; returns false (and changes
    /// nothing) for any other message.
    pub fn apply(&mut self, from: &str, msg: &Message) -> bool {
        match msg {
            Message::Announce { entries } => self.announce(from, entries),
            Message::Withdraw { entries } => self.withdraw(from, entries),
            Message::Resync { entries } => self.resync(from, entries),
            _ => return false,
        }
        true
    }

    /// `from` announces logins. An older epoch of the same peer is stale
    /// and ignored; an announcement by another peer wins (the agent
    /// logged in there later).
    pub fn announce(&mut self, from: &str, entries: &[DirectoryEntry]) {
        for e in entries {
            self.learn(from, &e.extension, e.epoch);
        }
    }

    /// `from` withdraws logins; only an entry of that peer with the same
    /// or an older epoch goes (a withdrawal that crossed a newer login
    /// does not remove it).
    pub fn withdraw(&mut self, from: &str, entries: &[DirectoryEntry]) {
        for e in entries {
            let stale = self
                .by_extension
                .get(&e.extension)
                .is_some_and(|(blade, epoch)| same_blade(blade, from) && *epoch <= e.epoch);
            if stale {
                self.by_extension.remove(&e.extension);
            }
        }
    }

    /// `from`'s full list replaces everything known of `from`.
    pub fn resync(&mut self, from: &str, entries: &[DirectoryEntry]) {
        self.drop_peer_entries(from);
        for e in entries {
            self.by_extension
                .insert(e.extension.clone(), (from.to_owned(), e.epoch));
        }
    }

    /// Records that `extension` is logged in on `from` at `epoch` (an
    /// announcement or a positive [`Message::Located`]).
    pub fn learn(&mut self, from: &str, extension: &str, epoch: u64) {
        if let Some((blade, old)) = self.by_extension.get(extension) {
            if same_blade(blade, from) && *old > epoch {
                return;
            }
        }
        self.by_extension
            .insert(extension.to_owned(), (from.to_owned(), epoch));
    }

    /// Drops `extension`'s entry if it names `from` (a stale entry).
    pub fn forget(&mut self, from: &str, extension: &str) {
        if self
            .by_extension
            .get(extension)
            .is_some_and(|(blade, _)| same_blade(blade, from))
        {
            self.by_extension.remove(extension);
        }
    }

    /// The peer `extension` is logged in on, as far as announced.
    pub fn lookup(&self, extension: &str) -> Option<&str> {
        self.by_extension.get(extension).map(|(b, _)| b.as_str())
    }

    /// The announced epoch of `extension`'s login.
    pub fn epoch(&self, extension: &str) -> Option<u64> {
        self.by_extension.get(extension).map(|(_, e)| *e)
    }

    /// The link to `peer` is up (expect its resync).
    pub fn peer_up(&mut self, peer: &str) {
        self.peers.insert(peer.to_owned());
    }

    /// The link to `peer` is down: forget it and its agents (it cannot
    /// host anyone now; its resync restores them).
    pub fn peer_down(&mut self, peer: &str) {
        self.peers.retain(|p| !same_blade(p, peer));
        self.drop_peer_entries(peer);
    }

    /// The peers whose link is up, in id order.
    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.peers.iter().map(String::as_str)
    }

    /// Number of remote agents known.
    pub fn len(&self) -> usize {
        self.by_extension.len()
    }

    /// Whether no remote agent is known.
    pub fn is_empty(&self) -> bool {
        self.by_extension.is_empty()
    }

    fn drop_peer_entries(&mut self, peer: &str) {
        self.by_extension
            .retain(|_, (blade, _)| !same_blade(blade, peer));
    }
}
