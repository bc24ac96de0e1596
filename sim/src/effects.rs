//! Carrying out a machine's outputs: messages to the network (with their wire size), storage
//! and hashing against the peer's store, completed at once, and events into the trace, the
//! story and the outcome. Also where the run's invariants are watched (a piece verified or
//! served that should not be, a tracker listing a peer past its TTL, requests in flight).

use bytes::{Bytes, BytesMut};
use p2p_core::limits::REQUESTS_IN_FLIGHT_PER_CONN_MAX;
use p2p_core::wire::codec::encode_frame;
use p2p_core::wire::Message;
use p2p_core::{Completion, ConnId, Event, FileId, Input, Output, PieceIndex};

use crate::scenario::{NodeIdx, StoryLevel};
use crate::store::StoreViolation;
use crate::trace::Described;
use crate::world::{node_name, World};

impl World {
    /// Carries out one output of `node`'s machine.
    pub(crate) fn dispatch(&mut self, node: NodeIdx, output: Output) {
        match output {
            Output::Connect { conn, addr } => self.network.connect(self.now, node, conn, addr, &mut self.queue),
            Output::Send { conn, message } => self.send(node, conn, message),
            Output::Close { conn } => {
                self.nodes[node.0].in_flight.remove(&conn);
                self.network.close(self.now, node, conn, &mut self.queue);
            }
            Output::Allocate { .. } => self.nodes[node.0].store.allocate(),
            Output::WriteBlock { file_id, piece, offset, bytes } => {
                let result = self
                    .check_file(file_id)
                    .map(|()| self.nodes[node.0].store.write(&self.content, piece.0, offset, bytes));
                self.local(node, Input::Completed(Completion::BlockWritten { file_id, piece, offset, result }));
            }
            Output::HashPiece { file_id, piece } => {
                let result = self.check_file(file_id).map(|()| self.nodes[node.0].store.hash(&self.content, piece.0));
                self.local(node, Input::Completed(Completion::PieceHashed { file_id, piece, result }));
            }
            Output::PieceVerified { piece, .. } => {
                let checked = self.nodes[node.0].store.mark_verified(&self.content, piece.0);
                self.violation(node, checked.err());
            }
            Output::ReadBlock { conn, file_id, piece, offset, len } => {
                let (result, violation) = match self.check_file(file_id) {
                    Ok(()) => self.nodes[node.0].store.read(&self.content, piece.0, offset, len),
                    Err(e) => (Err(e), None),
                };
                self.violation(node, violation);
                self.local(node, Input::Completed(Completion::BlockRead { conn, file_id, piece, offset, result }));
            }
            Output::Finalize { file_id } => {
                let result = self.check_file(file_id);
                if result.is_ok() {
                    let checked = self.nodes[node.0].store.finalize(&self.content);
                    self.violation(node, checked.err());
                }
                self.local(node, Input::Completed(Completion::Finalized { file_id, result }));
            }
            Output::Event(event) => self.event(node, event),
        }
    }

    fn check_file(&self, file_id: FileId) -> Result<(), String> {
        if file_id == self.file_id {
            Ok(())
        } else {
            Err(format!("no such file {}", file_id.short()))
        }
    }

    fn violation(&mut self, node: NodeIdx, violation: Option<StoreViolation>) {
        if let Some(v) = violation {
            let text = format!("{} at {}: {v:?}", self.name(node), self.now);
            self.log(node, format_args!("INVARIANT BROKEN: {v:?}"));
            self.outcome.violations.push(text);
        }
    }

    fn send(&mut self, node: NodeIdx, conn: ConnId, message: Message) {
        match &message {
            Message::Request { .. } => {
                let count = self.nodes[node.0].in_flight.get_or_insert_with(conn, || 0);
                *count += 1;
                let count = *count;
                self.outcome.requests_in_flight_max = self.outcome.requests_in_flight_max.max(count);
                if count == REQUESTS_IN_FLIGHT_PER_CONN_MAX * 4 + 1 {
                    let text =
                        format!("{} at {}: over {count} requests in flight on {conn}", self.name(node), self.now);
                    self.outcome.violations.push(text);
                }
            }
            Message::Cancel { .. } => self.request_answered(node, conn),
            Message::Located { holders, .. } if node == NodeIdx::TRACKER => {
                self.check_located(&holders.peers().collect::<Vec<_>>())
            }
            _ => {}
        }
        let size_bytes = self.sizes.of(&message);
        self.transmit(node, conn, message, size_bytes);
    }

    /// Invariant: the tracker names only peers it heard from within its TTL.
    fn check_located(&mut self, peers: &[p2p_core::wire::PeerAddr]) {
        let ttl = self.tracker_ttl();
        for peer in peers {
            let Some(holder) = self.network.node_at(peer.addr) else {
                continue;
            };
            let heard = self.nodes[holder.0].heard_by_tracker;
            if heard.is_none_or(|at| self.now.saturating_since(at) > ttl) {
                let name = self.name(holder).to_owned();
                let text = format!("tracker at {}: listed {name}, not heard from within its TTL", self.now);
                self.outcome.violations.push(text);
            }
        }
    }

    fn event(&mut self, node: NodeIdx, event: Event) {
        let pieces_level = self.scenario.story == StoryLevel::Pieces;
        let told = match &event {
            Event::PieceVerified { piece, from, .. } => {
                let from = self.network.node_at(*from).unwrap_or(NodeIdx::TRACKER);
                self.outcome.piece_sources.push((node, piece.0, from));
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
            Event::PiecesMissing { pieces, .. } => {
                let pieces: Vec<u32> = pieces.iter().map(|p| p.0).collect();
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
            Event::PieceRequested { .. } | Event::Sharing { .. } => pieces_level,
            Event::PieceCorrupt { .. } | Event::DownloadFailed { .. } => true,
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

/// Finds the wire size of each message sent without encoding the two most frequent ones
/// again and again (encoding showed in profiles): a `Request` is the frame of an all-zero
/// request plus the longer CBOR integers of its fields, and the last `Haves` is remembered, as
/// a peer sends the same batch to every remote in a row.
#[derive(Debug, Default)]
pub(crate) struct WireSizes {
    scratch: BytesMut,
    last_haves: Option<(Message, u64)>,
    zero_request: Option<u64>,
}

impl WireSizes {
    /// Bytes `message` occupies on the wire (see [`wire_size`]).
    pub(crate) fn of(&mut self, message: &Message) -> u64 {
        if let Message::Request { file_id, piece, offset, len } = message {
            let zero = *self.zero_request.get_or_insert_with(|| {
                let zero = Message::Request { file_id: *file_id, piece: PieceIndex(0), offset: 0, len: 0 };
                wire_size(&zero, &mut self.scratch)
            });
            return zero
                + [piece.0, *offset, *len].into_iter().map(|n| cbor_length_prefix_extra(n.into())).sum::<u64>();
        }
        if let Some((last, size)) = &self.last_haves {
            if last == message {
                return *size;
            }
        }
        let size = wire_size(message, &mut self.scratch);
        if matches!(message, Message::Haves { .. }) {
            self.last_haves = Some((message.clone(), size));
        }
        size
    }
}

/// Bytes `message` occupies on the wire: the frame `encode_frame` would write. A `Data`
/// message's payload is not copied to find out: its frame is the empty-payload frame plus the
/// payload and the longer CBOR length prefix.
pub(crate) fn wire_size(message: &Message, scratch: &mut BytesMut) -> u64 {
    let (probe, payload) = match message {
        Message::Data { file_id, piece, offset, bytes } => {
            let empty = Message::Data { file_id: *file_id, piece: *piece, offset: *offset, bytes: Bytes::new() };
            (Some(empty), bytes.len() as u64)
        }
        _ => (None, 0),
    };
    scratch.clear();
    // An oversized message would be refused by a real encoder; its size still costs the link.
    if encode_frame(probe.as_ref().unwrap_or(message), scratch).is_err() {
        return u64::MAX / 2;
    }
    scratch.len() as u64 + payload + cbor_length_prefix_extra(payload)
}

/// Extra bytes a CBOR unsigned integer `len` (or a byte string's length) needs beyond the one
/// of 0.
fn cbor_length_prefix_extra(len: u64) -> u64 {
    match len {
        0..=23 => 0,
        24..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_core::Digest;

    #[test]
    fn data_size_matches_the_encoder_without_copying() {
        let mut scratch = BytesMut::new();
        for len in [0usize, 5, 23, 24, 255, 256, 65_535, 65_536, 300_000] {
            let message = Message::Data {
                file_id: FileId(Digest([7; 32])),
                piece: PieceIndex(3),
                offset: 262_144,
                bytes: Bytes::from(vec![1u8; len]),
            };
            let mut real = BytesMut::new();
            encode_frame(&message, &mut real).expect("fits a frame");
            assert_eq!(wire_size(&message, &mut scratch), real.len() as u64, "payload of {len} bytes");
        }
    }

    #[test]
    fn request_size_matches_the_encoder() {
        let mut sizes = WireSizes::default();
        let edges = [0u32, 1, 23, 24, 255, 256, 65_535, 65_536, 262_144, u32::MAX];
        for piece in edges {
            for offset in edges {
                for len in edges {
                    let file_id = FileId(Digest([9; 32]));
                    let message = Message::Request { file_id, piece: PieceIndex(piece), offset, len };
                    let mut real = BytesMut::new();
                    encode_frame(&message, &mut real).expect("fits a frame");
                    assert_eq!(sizes.of(&message), real.len() as u64, "{message:?}");
                }
            }
        }
    }
}
