//! Carrying out a machine's outputs: messages to the network (with their wire size), storage
//! and hashing against the peer's store, completed at once, and events into the trace, the
//! story and the outcome. Also where the run's invariants are watched (a piece verified or
//! served that should not be, a tracker listing a peer past its TTL, requests in flight).

use bytes::BytesMut;
use p2p_core::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES, REQUESTS_IN_FLIGHT_PER_CONN_MAX};
use p2p_core::store::carry_out;
use p2p_core::wire::{Hello, Message};
use p2p_core::{ConnId, Event, Input, Output};

use crate::scenario::{NodeIdx, Role, StoryLevel};
use crate::store::{PeerStore, StoreViolation};
use crate::trace::Described;
use crate::world::{node_name, World};

impl World {
    /// Carries out one output of `node`'s machine.
    pub(crate) fn dispatch(&mut self, node: NodeIdx, output: Output) {
        match output {
            Output::Connect { conn, addr } => self.network.connect(self.now, node, conn, addr, &mut self.queue),
            Output::Send { conn, message } => self.send_as_role(node, conn, message),
            Output::Close { conn } => {
                self.nodes[node.0].in_flight.remove(&conn);
                self.network.close(self.now, node, conn, &mut self.queue);
            }
            Output::Event(event) => self.event(node, event),
            storage => {
                let mut store = PeerStore::new(&mut self.nodes[node.0].store, &self.content, self.file_id);
                let completion = carry_out(&mut store, storage);
                let violation = store.violation;
                self.violation(node, violation);
                if let Some(completion) = completion {
                    self.local(node, Input::Completed(completion));
                }
            }
        }
    }

    fn violation(&mut self, node: NodeIdx, violation: Option<StoreViolation>) {
        if let Some(v) = violation {
            let text = format!("{} at {}: {v:?}", self.name(node), self.now);
            self.log(node, format_args!("INVARIANT BROKEN: {v:?}"));
            self.outcome.violations.push(text);
        }
    }

    /// Sends `message` as `node`'s role has it: a `liar-mixed` peer replaces the first block
    /// of a piece with a bad copy and drops the connection after it; an `impersonator` claims
    /// another peer's id in its `Hello`s.
    fn send_as_role(&mut self, node: NodeIdx, conn: ConnId, message: Message) {
        match (self.roles[node.0], message) {
            (Role::LiarMixed, Message::Data { file_id, chunk, offset: 0, bytes }) if !bytes.is_empty() => {
                let mut bad = BytesMut::from(&bytes[..]);
                bad[0] ^= 0xff;
                self.send(node, conn, Message::Data { file_id, chunk, offset: 0, bytes: bad.freeze() });
                self.nodes[node.0].in_flight.remove(&conn);
                self.network.close(self.now, node, conn, &mut self.queue);
                self.local(node, Input::Disconnected { conn });
            }
            (Role::Impersonator, Message::Hello(hello)) => {
                // The first other peer: its id is what the impersonator claims to be.
                let victim = if node.0 == 1 && self.scenario.peers.len() > 1 { NodeIdx(2) } else { NodeIdx(1) };
                let claimed = Hello { peer_id: self.network.peer_id(victim), ..hello };
                self.send(node, conn, Message::Hello(claimed));
            }
            (_, message) => self.send(node, conn, message),
        }
    }

    pub(crate) fn send(&mut self, node: NodeIdx, conn: ConnId, message: Message) {
        match &message {
            Message::Request { .. } | Message::Requests { .. } => {
                let blocks = message.block_requests();
                let count = self.nodes[node.0].in_flight.get_or_insert_with(conn, || 0);
                *count += blocks;
                let count = *count;
                self.outcome.requests_in_flight_max = self.outcome.requests_in_flight_max.max(count);
                let limit = REQUESTS_IN_FLIGHT_PER_CONN_MAX * 4;
                if count > limit && count - blocks <= limit {
                    let text =
                        format!("{} at {}: over {limit} requests in flight on {conn}", self.name(node), self.now);
                    self.outcome.violations.push(text);
                }
            }
            Message::Cancel { .. } => self.request_answered(node, conn),
            Message::Located { holders, .. } => {
                if let Some(tracker) = self.scenario.tracker_number(node) {
                    self.check_located(tracker, &holders.peers().collect::<Vec<_>>());
                }
            }
            _ => {}
        }
        let size_bytes = wire_size(&message);
        self.transmit(node, conn, message, size_bytes);
    }

    /// Invariant: a tracker names only peers it heard from within its TTL.
    fn check_located(&mut self, tracker: usize, peers: &[p2p_core::wire::PeerAddr]) {
        let ttl = self.tracker_ttl();
        let node_of_tracker = self.scenario.tracker_node(tracker);
        for peer in peers {
            let Some(holder) = self.network.node_at(peer.addr) else {
                continue;
            };
            let heard = self.nodes[holder.0].heard_by_tracker.get(&tracker).copied();
            if heard.is_none_or(|at| self.now.saturating_since(at) > ttl) {
                let name = self.name(holder).to_owned();
                let tracker = self.name(node_of_tracker).to_owned();
                let text = format!("{tracker} at {}: listed {name}, not heard from within its TTL", self.now);
                self.outcome.violations.push(text);
            }
        }
    }

    fn event(&mut self, node: NodeIdx, event: Event) {
        let pieces_level = self.scenario.story == StoryLevel::Pieces;
        let told = match &event {
            Event::ChunkVerified { chunk, from, .. } => {
                let from = self.network.node_at(*from).unwrap_or(NodeIdx::TRACKER);
                self.outcome.chunk_sources.push((node, chunk.0, from));
                self.outcome.chunk_verified_at.push(self.now);
                pieces_level
            }
            Event::Complete { .. } => {
                let summary = &mut self.nodes[node.0].summary;
                summary.completed_at.get_or_insert(self.now);
                self.outcome.last_completion = Some(self.now);
                true
            }
            Event::PeerBanned { addr, .. } => {
                let banned = self.network.node_at(*addr).unwrap_or(NodeIdx::TRACKER);
                self.outcome.bans.insert((node, banned));
                true
            }
            Event::ChunksMissing { chunks, .. } => {
                // Scenarios name pieces; a piece is missing while any of its chunks is.
                let per_piece = self.content.manifest.chunks_per_piece();
                let mut pieces: Vec<u32> = chunks.iter().map(|c| c.0 / per_piece).collect();
                pieces.dedup();
                self.outcome.missing.insert(node, pieces.clone()) != Some(pieces)
            }
            Event::Located { .. } if pieces_level => {
                let text = Described { event: &event, name: &|addr| self.name_at(addr) }.to_string();
                let state = &mut self.nodes[node.0];
                let changed = state.story_located.as_ref() != Some(&text);
                state.story_located = Some(text);
                changed
            }
            Event::LocateSent { .. } => pieces_level && self.nodes[node.0].story_located.is_none(),
            Event::ChunkRequested { .. } | Event::Sharing { .. } => pieces_level,
            Event::ChunkCorrupt { .. } | Event::DownloadFailed { .. } => true,
            _ => false,
        };
        if told {
            let text = Described { event: &event, name: &|addr| self.name_at(addr) }.to_string();
            self.tell(node, text);
        } else {
            // Written straight into the trace: most events are told nowhere else.
            let (network, nodes) = (&self.network, &self.nodes);
            let name = |addr| node_name(network, nodes, addr);
            self.trace.record(
                self.now,
                &nodes[node.0].name,
                format_args!("{}", Described { event: &event, name: &name }),
            );
        }
    }
}

/// Bytes `message` occupies on the simulated link: its frame as core's encoder writes it. A
/// message over the frame limit, which a real encoder refuses, still costs the link (it never
/// gets through in time).
fn wire_size(message: &Message) -> u64 {
    let len = message.encoded_len();
    if len - FRAME_HEADER_BYTES > FRAME_BYTES_MAX {
        return u64::MAX / 2;
    }
    len as u64
}
