//! Peer exchange: connected peers of a file tell each other of the other peers of that file
//! they are connected to, so a swarm keeps finding peers when its trackers are gone or slow.
//! The trackers remain the first source; what a remote tells is used like a tracker's answer
//! (a connection is opened to each named peer, within the outbound bound).
//!
//! Every `PEX_INTERVAL` a peer sends each remote that downloads a file (one that sent a
//! bitfield for it that is not whole) a `Peers` message naming up to
//! `PEX_PEERS_PER_MESSAGE_MAX` of the file's other peers it has a ready connection with and
//! never named to that remote, drawn at random so that a crowd's members do not all hear of
//! the same few first. Only peers with a serving address and an id (from their `Hello`) are
//! named. On the receiving side a remote's `Peers` for a file is acted on at most every
//! `PEX_RECEIVE_INTERVAL_MIN`, only while the file is being fetched; a message naming more than
//! `PEX_PEERS_PER_MESSAGE_MAX` peers breaks the protocol.
//!
//! State (private to this module): the next round's time, per connection and file the peers
//! already named to it and when its last message was acted on. Entries of closed connections
//! are dropped at the next round, so both maps stay within the open connections.

use std::collections::BTreeMap;

use crate::bitfield::Bitfield;
use crate::ids::{ConnId, FileId, PeerId};
use crate::limits::{PEX_INTERVAL, PEX_PEERS_PER_MESSAGE_MAX, PEX_RECEIVE_INTERVAL_MIN};
use crate::small::VecSet;
use crate::time::Time;
use crate::wire::{Message, PeerAddr};

use super::remote::Stage;
use super::Peer;

/// The peer-exchange state of one peer.
#[derive(Debug)]
pub(super) struct Pex {
    /// When the next round of `Peers` messages goes out.
    due_at: Time,
    /// The peers already named to each connection, per file.
    told: BTreeMap<(ConnId, FileId), VecSet<PeerId>>,
    /// When each connection's last `Peers` of each file was acted on.
    heard_at: BTreeMap<(ConnId, FileId), Time>,
}

impl Pex {
    /// Nothing told or heard; the first round is due at once.
    pub fn new() -> Pex {
        Pex { due_at: Time::ZERO, told: BTreeMap::new(), heard_at: BTreeMap::new() }
    }

    /// When the next round is due (the peer asks for it while it has remotes).
    pub fn due_at(&self) -> Time {
        self.due_at
    }
}

impl Peer {
    /// Sends this round's `Peers` messages, if the round is due.
    pub(super) fn pex_timeout(&mut self) {
        if self.pex.due_at > self.now {
            return;
        }
        self.pex.due_at = self.now + PEX_INTERVAL;
        let remotes = &self.remotes;
        self.pex.told.retain(|(conn, _), _| remotes.contains_key(conn));
        self.pex.heard_at.retain(|(conn, _), _| remotes.contains_key(conn));
        for (conn, file_id, peers) in self.pex_round() {
            self.send(conn, Message::Peers { file_id, peers });
        }
    }

    /// What each downloading remote has not heard of yet: `(connection, file, peers)`.
    fn pex_round(&mut self) -> Vec<(ConnId, FileId, Vec<PeerAddr>)> {
        let mut by_file: BTreeMap<FileId, Vec<(ConnId, PeerAddr)>> = BTreeMap::new();
        for (conn, remote) in &self.remotes {
            let Some(peer_id) = remote.peer_id.filter(|_| remote.stage == Stage::Ready && remote.addr.port() != 0)
            else {
                continue;
            };
            for (file_id, _) in remote.files.iter() {
                by_file.entry(*file_id).or_default().push((*conn, PeerAddr { peer_id, addr: remote.addr }));
            }
        }
        let mut round = Vec::new();
        for (file_id, peers) in &by_file {
            for (conn, _) in peers {
                if self.remotes[conn].files.get(file_id).is_some_and(Bitfield::is_full) {
                    continue;
                }
                let told = self.pex.told.entry((*conn, *file_id)).or_default();
                let mut fresh: Vec<PeerAddr> =
                    peers.iter().filter(|(c, p)| c != conn && !told.contains(&p.peer_id)).map(|(_, p)| *p).collect();
                if fresh.is_empty() {
                    continue;
                }
                self.rng.shuffle(&mut fresh);
                fresh.truncate(PEX_PEERS_PER_MESSAGE_MAX);
                for peer in &fresh {
                    told.insert(peer.peer_id);
                }
                round.push((*conn, *file_id, fresh));
            }
        }
        round
    }

    /// A remote named other peers of `file_id`: connect to them as to holders a tracker named.
    pub(super) fn on_peers(&mut self, conn: ConnId, file_id: FileId, peers: Vec<PeerAddr>) {
        if peers.len() > PEX_PEERS_PER_MESSAGE_MAX {
            self.violation(conn, format!("peers message naming {} peers", peers.len()));
            return;
        }
        if !self.files.get(&file_id).is_some_and(|entry| entry.is_fetching()) {
            return;
        }
        let key = (conn, file_id);
        if self.pex.heard_at.get(&key).is_some_and(|at| self.now < *at + PEX_RECEIVE_INTERVAL_MIN) {
            return;
        }
        self.pex.heard_at.insert(key, self.now);
        for peer in peers.into_iter().filter(|peer| peer.addr.port() != 0) {
            self.connect_for(peer, file_id);
        }
    }
}
