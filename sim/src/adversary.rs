//! Adversaries the world plays itself, beside a node's honest machine: the slot hog's extra
//! connections. At its join a `slot-hog` opens [`INBOUND_PEERS_PER_IP_MAX`] + 1 connections
//! to every peer that holds pieces at the start (one past what one address may hold), says
//! `Hello` on each, and then sends nothing: it only keeps slots. Its machine never sees these
//! connections; the world answers for them and drops what arrives on them.

use p2p_core::limits::INBOUND_PEERS_PER_IP_MAX;
use p2p_core::wire::{Hello, Message, Role as WireRole, PROTOCOL_VERSION};
use p2p_core::{ConnId, Input};

use crate::network::{node_addr, LISTEN_PORT};
use crate::scenario::{NodeIdx, Role};
use crate::world::World;

/// The first connection id of a hog's own connections, far above any its machine opens.
const HOG_CONN_FIRST: u64 = 1 << 48;

impl World {
    /// `hog` joined: it opens its connections to every initial holder.
    pub(crate) fn hog_slots(&mut self, hog: NodeIdx) {
        let holders: Vec<NodeIdx> = (1..=self.scenario.peers.len())
            .map(NodeIdx)
            .filter(|n| *n != hog && !self.scenario.peers[n.0 - 1].holds.is_empty())
            .collect();
        let mut next = HOG_CONN_FIRST;
        for holder in holders {
            for _ in 0..=INBOUND_PEERS_PER_IP_MAX {
                self.network.connect(self.now, hog, ConnId::Outbound(next), node_addr(holder), &mut self.queue);
                next += 1;
            }
        }
        self.log(hog, format_args!("opens {} connections to hog slots", next - HOG_CONN_FIRST));
    }

    /// Whether `input` arriving at `node` is for one of a hog's own connections; if so, the
    /// world has dealt with it (a `Hello` on each connection that opens, nothing else).
    pub(crate) fn hog_input(&mut self, node: NodeIdx, input: &Input) -> bool {
        let is_hog =
            self.scenario.tracker_number(node).is_none() && self.scenario.peers[node.0 - 1].role == Role::SlotHog;
        let conn = match input {
            Input::Connected { conn, .. } | Input::Disconnected { conn } | Input::Message { conn, .. } => *conn,
            _ => return false,
        };
        if !is_hog || !matches!(conn, ConnId::Outbound(n) if n >= HOG_CONN_FIRST) {
            return false;
        }
        if let Input::Connected { .. } = input {
            let peer_id = self.network.peer_id(node);
            let hello = Hello {
                version: PROTOCOL_VERSION,
                role: WireRole::Peer,
                peer_id,
                listen_port: LISTEN_PORT,
                listen_ip: None,
            };
            self.send(node, conn, Message::Hello(hello));
        }
        true
    }
}
