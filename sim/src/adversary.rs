//! Adversaries the world plays itself, beside a node's honest machine, on connections of
//! their own: the slot hog's and the tracker flooder's. Their machine never sees these
//! connections; the world answers for them and reads what arrives on them.
//!
//! - At its join a `slot-hog` opens [`INBOUND_PEERS_PER_IP_MAX`] + 1 connections to every peer
//!   that holds pieces at the start (one past what one address may hold), says `Hello` on each,
//!   and then sends nothing: it only keeps slots.
//! - At its join a `tracker-flooder` opens [`FLOOD_CONNECTIONS`] connections to every tracker
//!   (one registration more than its address's file quota needs), each proving a key of its own
//!   and saying `Hello` with a port of its own, and announces [`TRACKER_FILES_PER_PEER_MAX`] + 1 fake files on each at
//!   once: more than one registration and one address may make a tracker keep. It tallies
//!   each tracker's answers ([`FloodTally`]) for the `tracker-bounded` oracle.

use p2p_core::limits::{
    INBOUND_PEERS_PER_IP_MAX, PIECE_BYTES_MIN, TRACKER_FILES_PER_IP_MAX, TRACKER_FILES_PER_PEER_MAX,
};
use p2p_core::rng::Rng;
use p2p_core::wire::{ErrorCode, Hello, Message, Role as WireRole};
use p2p_core::{Bitfield, ConnId, Digest, Input, Manifest, PeerId};

use crate::network::{node_addr, tracker_addr, LISTEN_PORT};
use crate::scenario::{NodeIdx, Role};
use crate::world::World;

/// The first connection id of an adversary's own connections, far above any its machine opens.
const OWN_CONN_FIRST: u64 = 1 << 48;
/// Connections a flooder opens to each tracker: enough registrations of
/// [`TRACKER_FILES_PER_PEER_MAX`] files each to pass its address's [`TRACKER_FILES_PER_IP_MAX`].
pub const FLOOD_CONNECTIONS: usize = TRACKER_FILES_PER_IP_MAX / TRACKER_FILES_PER_PEER_MAX + 1;

/// What one tracker answered a flooder's announces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodTally {
    /// Announces answered `Announced`, over the whole flood.
    pub accepted: usize,
    /// Announces refused by a quota.
    pub refused: usize,
    /// The most fake files the tracker kept for the flooder at once: those accepted on
    /// connections still open. A tracker forgets a registration whose connection closes, and
    /// both ends hear of a close after the same latency, so the flooder hears of it before any
    /// answer the freed quota made room for.
    pub kept_max: usize,
    /// Fake files accepted on each flood connection still open.
    open: [usize; FLOOD_CONNECTIONS],
}

impl FloodTally {
    /// Whether the tracker kept no more fake files at once than one address may make it keep.
    pub fn within_quota(&self) -> bool {
        self.kept_max <= TRACKER_FILES_PER_IP_MAX
    }

    fn accept(&mut self, k: usize) {
        self.accepted += 1;
        self.open[k] += 1;
        self.kept_max = self.kept_max.max(self.open.iter().sum());
    }
}

impl World {
    /// `node` joined: a slot hog or a tracker flooder opens its own connections.
    pub(crate) fn adversary_joined(&mut self, node: NodeIdx) {
        match self.scenario.peers[node.0 - 1].role {
            Role::SlotHog => self.hog_slots(node),
            Role::TrackerFlooder => self.flood_trackers(node),
            Role::Honest | Role::LiarMixed | Role::Impersonator | Role::NoKey => {}
        }
    }

    /// A hog opens its connections to every initial holder.
    fn hog_slots(&mut self, hog: NodeIdx) {
        let holders: Vec<NodeIdx> = (1..=self.scenario.peers.len())
            .map(NodeIdx)
            .filter(|n| *n != hog && !self.scenario.peers[n.0 - 1].holds.is_empty())
            .collect();
        let mut next = OWN_CONN_FIRST;
        for holder in holders {
            for _ in 0..=INBOUND_PEERS_PER_IP_MAX {
                self.network.connect(self.now, hog, ConnId::Outbound(next), node_addr(holder), &mut self.queue);
                next += 1;
            }
        }
        self.log(hog, format_args!("opens {} connections to hog slots", next - OWN_CONN_FIRST));
    }

    /// A flooder opens its connections to every tracker; its tallies start afresh.
    fn flood_trackers(&mut self, flooder: NodeIdx) {
        for number in 0..self.scenario.tracker.count {
            self.outcome.floods.insert((flooder, number), FloodTally::default());
            for k in 0..FLOOD_CONNECTIONS {
                let conn = ConnId::Outbound(OWN_CONN_FIRST + (number * FLOOD_CONNECTIONS + k) as u64);
                let key = (flooder, self.flood_id(flooder, k));
                self.network.connect_as(self.now, key, conn, tracker_addr(number), &mut self.queue);
            }
        }
        let count = FLOOD_CONNECTIONS * self.scenario.tracker.count;
        self.log(flooder, format_args!("opens {count} connections to flood the trackers"));
    }

    /// Whether `input` arriving at `node` is for one of an adversary's own connections; if
    /// so, the world has dealt with it.
    pub(crate) fn adversary_input(&mut self, node: NodeIdx, input: &Input) -> bool {
        if self.scenario.tracker_number(node).is_some() {
            return false;
        }
        let conn = match input {
            Input::Connected { conn, .. } | Input::Disconnected { conn } | Input::Message { conn, .. } => *conn,
            _ => return false,
        };
        let ConnId::Outbound(n) = conn else { return false };
        let Some(own) = n.checked_sub(OWN_CONN_FIRST) else { return false };
        match self.scenario.peers[node.0 - 1].role {
            Role::SlotHog => {
                if let Input::Connected { .. } = input {
                    self.send(node, conn, Message::Hello(self.hello(node, LISTEN_PORT)));
                }
            }
            Role::TrackerFlooder => self.flood_input(node, conn, own as usize, input),
            Role::Honest | Role::LiarMixed | Role::Impersonator | Role::NoKey => return false,
        }
        true
    }

    /// On flood connection `own` of `flooder`: at the connection, `Hello` and every announce;
    /// then each answer goes into the tally of its tracker, and a close takes what that
    /// connection had kept out of it.
    fn flood_input(&mut self, flooder: NodeIdx, conn: ConnId, own: usize, input: &Input) {
        let (number, k) = (own / FLOOD_CONNECTIONS, own % FLOOD_CONNECTIONS);
        match input {
            Input::Connected { .. } => {
                // Ports of their own: each connection is a registration of its own.
                let port = LISTEN_PORT + 1 + k as u16;
                let hello = Hello { peer_id: self.flood_id(flooder, k), ..self.hello(flooder, port) };
                self.send(flooder, conn, Message::Hello(hello));
                for i in 0..=TRACKER_FILES_PER_PEER_MAX {
                    self.send(flooder, conn, fake_announce(flooder, own, i));
                }
            }
            Input::Disconnected { .. } => {
                if let Some(tally) = self.outcome.floods.get_mut(&(flooder, number)) {
                    tally.open[k] = 0;
                }
            }
            Input::Message { message, .. } => {
                let Some(tally) = self.outcome.floods.get_mut(&(flooder, number)) else { return };
                match message {
                    Message::Announced { .. } => tally.accept(k),
                    Message::Error { code: ErrorCode::Overloaded, detail, .. } if detail.starts_with("quota") => {
                        tally.refused += 1;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The key a flooder proves on its `k`th connection to each tracker: one a connection, as
    /// a tracker registers each id once.
    fn flood_id(&self, flooder: NodeIdx, k: usize) -> PeerId {
        PeerId::from_seed(Rng::derive_seed(self.seed, &format!("flood/{}/{k}", flooder.0)))
    }

    /// `node`'s `Hello` as a peer listening on `port`.
    fn hello(&self, node: NodeIdx, port: u16) -> Hello {
        let peer_id = self.network.peer_id(node);
        Hello::new(WireRole::Peer, peer_id, port)
    }
}

/// An announce of fake file `i` of flood connection `own`, one piece long, held whole.
fn fake_announce(flooder: NodeIdx, own: usize, i: usize) -> Message {
    let name = format!("flood-{}-{own}-{i}", flooder.0);
    let hashes = vec![Digest([0xf1; 32])];
    // One byte in one piece of the smallest size meets every rule of a manifest.
    let manifest = Manifest::new(name, 1, PIECE_BYTES_MIN, hashes).expect("a one-piece manifest is valid");
    Message::Announce { file_id: manifest.file_id(), manifest: Some(Box::new(manifest)), have: Bitfield::full(1) }
}
