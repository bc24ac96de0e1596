//! A test harness: one tracker and any number of peers wired by plain function calls, with
//! in-memory stores and a virtual clock (the shape of quinn-proto's `Pair`).
//!
//! Messages travel through the real frame codec with zero latency; storage work completes at
//! once; time jumps to the earliest `poll_timeout` when nothing else is pending. `run_until`
//! fails a test that does not settle within a bounded number of steps or a virtual deadline.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;

use crate::bitfield::Bitfield;
use crate::error::CommandError;
use crate::ids::{ChunkIndex, ConnId, FileId, PeerId, PieceIndex};
use crate::machine::{step, step_command, Command, Completion, Event, Input, Machine, Output};
use crate::manifest::{Manifest, ManifestBuilder};
use crate::peer::{Peer, PeerConfig};
use crate::store::carry_out;
use crate::time::Time;
use crate::tracker::{Tracker, TrackerConfig};
use crate::wire::{decode_frame, encode_frame};

mod store;
use store::MemoryStore;

/// Index of a node in the harness; the tracker is node 0.
pub type NodeIx = usize;

/// The tracker's index.
pub const TRACKER: NodeIx = 0;

/// Steps after which `run_until` declares the system stuck.
const STEPS_MAX: usize = 2_000_000;

enum Machine_ {
    Tracker(Box<Tracker>),
    Peer(Box<Peer>),
}

impl Machine_ {
    /// The id the node proves to those it connects with.
    fn peer_id(&self) -> PeerId {
        match self {
            Machine_::Tracker(tracker) => tracker.peer_id(),
            Machine_::Peer(peer) => peer.peer_id(),
        }
    }
}

/// One node: its machine, its address, and (for a peer) its in-memory store.
struct Node {
    machine: Machine_,
    addr: SocketAddr,
    alive: bool,
    /// File contents by id: complete copies for shared files, partial ones for downloads.
    store: MemoryStore,
    /// Chunks this node serves with flipped bytes.
    corrupt: BTreeSet<(FileId, ChunkIndex)>,
    /// When set, the node never answers requests (a black hole).
    silent: bool,
    /// While set, the node's hash results wait here (a CPU that falls behind).
    held_hashes: Option<Vec<Completion>>,
    next_inbound: u64,
}

/// A tracker, peers, and the wires between them.
pub struct Harness {
    now: Time,
    nodes: Vec<Node>,
    links: BTreeMap<(NodeIx, ConnId), (NodeIx, ConnId)>,
    pending: VecDeque<(NodeIx, Input)>,
    /// Every event with the time and node it came from.
    pub events: Vec<(Time, NodeIx, Event)>,
    /// Every message delivered: when, to which node, and its kind.
    pub received: Vec<(Time, NodeIx, &'static str)>,
    /// Every block request delivered (a `Request`, or one block of a `Requests`): when and to
    /// which node.
    pub requested: Vec<(Time, NodeIx)>,
}

impl Harness {
    /// A harness with a tracker seeded by `seed` and no peers.
    pub fn new(seed: u64) -> Harness {
        let tracker = Tracker::new(tracker_config(seed));
        let mut harness = Harness {
            now: Time::ZERO,
            nodes: Vec::new(),
            links: BTreeMap::new(),
            pending: VecDeque::new(),
            events: Vec::new(),
            received: Vec::new(),
            requested: Vec::new(),
        };
        harness.nodes.push(Node::new(Machine_::Tracker(Box::new(tracker)), addr(0)));
        harness
    }

    /// Adds a peer seeded by `seed`, optionally upload-capped; returns its index.
    pub fn add_peer(&mut self, seed: u64, upload_limit_bytes_per_s: Option<u64>) -> NodeIx {
        let ix = self.nodes.len();
        let mut config = PeerConfig::new(PeerId::from_seed(seed), seed, addr(0), 7000);
        config.upload_limit_bytes_per_s = upload_limit_bytes_per_s;
        self.nodes.push(Node::new(Machine_::Peer(Box::new(Peer::new(config))), addr(ix)));
        ix
    }

    /// The address of a node.
    pub fn addr(&self, node: NodeIx) -> SocketAddr {
        self.nodes[node].addr
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The peer machine of a node.
    pub fn peer(&self, node: NodeIx) -> &Peer {
        match &self.nodes[node].machine {
            Machine_::Peer(peer) => peer,
            Machine_::Tracker(_) => panic!("node {node} is the tracker"),
        }
    }

    /// Makes `node` share `bytes` as `manifest`, serving only the chunks of `pieces` (all when
    /// `None`).
    pub fn share(&mut self, node: NodeIx, manifest: &Manifest, bytes: &[u8], pieces: Option<&[u32]>) {
        let mut have = Bitfield::new(manifest.chunk_count());
        match pieces {
            Some(list) => list.iter().flat_map(|p| manifest.chunks_of(PieceIndex(*p))).for_each(|c| _ = have.set(c)),
            None => have = Bitfield::full(manifest.chunk_count()),
        }
        self.nodes[node].store.share(manifest, bytes, have.clone());
        self.command(node, Command::Share { manifest: manifest.clone(), have });
    }

    /// Gives a local command to a peer now (none to a crashed one).
    ///
    /// # Panics
    /// When the peer refuses it (a test's mistake; [`Harness::try_command`] expects refusals).
    pub fn command(&mut self, node: NodeIx, command: Command) {
        if let Err(refused) = self.try_command(node, command) {
            panic!("node {node} refused a command: {refused}");
        }
    }

    /// Gives a local command to a peer now (none to a crashed one), or hears why it refused.
    pub fn try_command(&mut self, node: NodeIx, command: Command) -> Result<(), CommandError> {
        if !self.nodes[node].alive {
            return Ok(());
        }
        let mut outputs = Vec::new();
        let taken = step_command(self.nodes[node].machine_mut(), self.now, command, |output| outputs.push(output));
        for output in outputs {
            self.carry_out(node, output);
        }
        taken.map(|_| ())
    }

    /// Makes `node` serve flipped bytes for `chunk`.
    pub fn corrupt(&mut self, node: NodeIx, file_id: FileId, chunk: u32) {
        self.nodes[node].corrupt.insert((file_id, ChunkIndex(chunk)));
    }

    /// Makes `node` accept requests and never answer them.
    pub fn silence(&mut self, node: NodeIx) {
        self.nodes[node].silent = true;
    }

    /// Holds back `node`'s hash results until [`Harness::release_hashes`].
    pub fn hold_hashes(&mut self, node: NodeIx) {
        self.nodes[node].held_hashes.get_or_insert_with(Vec::new);
    }

    /// Hands `node` the hash results held back, in order, and stops holding them.
    pub fn release_hashes(&mut self, node: NodeIx) {
        let held = self.nodes[node].held_hashes.take().unwrap_or_default();
        self.pending.extend(held.into_iter().map(|c| (node, Input::Completed(c))));
    }

    /// The node disappears: every connection to it drops.
    pub fn crash(&mut self, node: NodeIx) {
        self.nodes[node].alive = false;
        let cut: Vec<_> = self.links.keys().filter(|(n, _)| *n == node).copied().collect();
        for end in cut {
            if let Some(other) = self.links.remove(&end) {
                self.links.remove(&other);
                self.pending.push_back((other.0, Input::Disconnected { conn: other.1 }));
            }
        }
    }

    /// Replaces the tracker with a fresh one that knows nothing.
    pub fn restart_tracker(&mut self, seed: u64) {
        self.crash(TRACKER);
        let tracker = Tracker::new(tracker_config(seed));
        self.nodes[TRACKER] = Node::new(Machine_::Tracker(Box::new(tracker)), addr(0));
    }

    /// The bytes `node` stores for a file.
    pub fn stored(&self, node: NodeIx, file_id: FileId) -> Option<&[u8]> {
        self.nodes[node].store.bytes(file_id)
    }

    /// Whether `node` reported `Complete` for `file_id`.
    pub fn completed(&self, node: NodeIx, file_id: FileId) -> bool {
        self.events.iter().any(|(_, n, e)| *n == node && *e == Event::Complete { file_id })
    }

    /// Events of one node, in order.
    pub fn events_of(&self, node: NodeIx) -> impl Iterator<Item = &(Time, NodeIx, Event)> {
        self.events.iter().filter(move |(_, n, _)| *n == node)
    }

    /// Runs until `done` holds; panics if virtual time passes `deadline` or the run never
    /// settles.
    pub fn run_until(&mut self, deadline: Duration, mut done: impl FnMut(&Harness) -> bool) {
        let end = self.now + deadline;
        for _ in 0..STEPS_MAX {
            if done(self) {
                return;
            }
            if let Some((node, input)) = self.pending.pop_front() {
                self.deliver(node, input);
                continue;
            }
            let next = self.next_timeout().unwrap_or_else(|| panic!("idle at {} and not done", self.now));
            assert!(next.0 <= end, "not done by {end}; next wake-up at {}", next.0);
            self.now = self.now.max(next.0);
            self.deliver(next.1, Input::Timeout);
        }
        panic!("no settling within {STEPS_MAX} steps");
    }

    /// Runs for `span` of virtual time.
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        loop {
            if let Some((node, input)) = self.pending.pop_front() {
                self.deliver(node, input);
                continue;
            }
            match self.next_timeout() {
                Some((at, node)) if at <= end => {
                    self.now = self.now.max(at);
                    self.deliver(node, Input::Timeout);
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn next_timeout(&self) -> Option<(Time, NodeIx)> {
        let alive = self.nodes.iter().enumerate().filter(|(_, n)| n.alive);
        alive.filter_map(|(ix, n)| n.machine().poll_timeout().map(|t| (t, ix))).min()
    }

    fn deliver(&mut self, node: NodeIx, input: Input) {
        if !self.nodes[node].alive {
            return;
        }
        let mut outputs = Vec::new();
        step(self.nodes[node].machine_mut(), self.now, input, |output| outputs.push(output));
        for output in outputs {
            self.carry_out(node, output);
        }
    }

    fn carry_out(&mut self, node: NodeIx, output: Output) {
        match output {
            Output::Connect { conn, addr } => self.connect(node, conn, addr),
            Output::Send { conn, message } => {
                let Some(&(peer, peer_conn)) = self.links.get(&(node, conn)) else { return };
                // Gone at once: the sender may serve its next block.
                if matches!(message, crate::wire::Message::Data { .. }) {
                    self.pending.push_back((node, Input::Sent { conn, data_frames: 1 }));
                }
                if self.nodes[node].silent && matches!(message, crate::wire::Message::Data { .. }) {
                    return;
                }
                // Through the real codec, so every message in a test is also a wire test.
                let mut frame = BytesMut::new();
                encode_frame(&message, &mut frame).expect("message fits a frame");
                let message = decode_frame(&mut frame).expect("decodes").expect("whole frame");
                self.received.push((self.now, peer, message.kind()));
                self.requested.extend((0..message.block_requests()).map(|_| (self.now, peer)));
                self.pending.push_back((peer, Input::Message { conn: peer_conn, message }));
            }
            Output::Close { conn } => {
                if let Some(other) = self.links.remove(&(node, conn)) {
                    self.links.remove(&other);
                    self.pending.push_back((other.0, Input::Disconnected { conn: other.1 }));
                }
            }
            Output::Event(event) => self.events.push((self.now, node, event)),
            storage => self.storage(node, storage),
        }
    }

    fn connect(&mut self, node: NodeIx, conn: ConnId, target: SocketAddr) {
        let found = self.nodes.iter().position(|n| n.addr == target && n.alive);
        let Some(target_ix) = found else {
            self.pending.push_back((node, Input::Disconnected { conn }));
            return;
        };
        self.nodes[target_ix].next_inbound += 1;
        let inbound = ConnId::Inbound(self.nodes[target_ix].next_inbound);
        self.links.insert((node, conn), (target_ix, inbound));
        self.links.insert((target_ix, inbound), (node, conn));
        let source = SocketAddr::new(self.nodes[node].addr.ip(), 40000);
        let (opener_id, target_id) = (self.nodes[node].machine.peer_id(), self.nodes[target_ix].machine.peer_id());
        self.pending.push_back((node, Input::Connected { conn, remote: target, peer_id: target_id }));
        self.pending.push_back((target_ix, Input::Connected { conn: inbound, remote: source, peer_id: opener_id }));
    }

    fn storage(&mut self, node: NodeIx, output: Output) {
        let state = &mut self.nodes[node];
        let Some(mut completion) = carry_out(&mut state.store, output) else { return };
        if let Completion::BlockRead { file_id, chunk, result: Ok(bytes), .. } = &mut completion {
            if state.corrupt.contains(&(*file_id, *chunk)) {
                *bytes = bytes.iter().map(|b| b ^ 0x5a).collect();
            }
        }
        if let (Completion::ChunkHashed { .. }, Some(held)) = (&completion, &mut state.held_hashes) {
            held.push(completion);
            return;
        }
        self.pending.push_back((node, Input::Completed(completion)));
    }
}

impl Node {
    fn new(machine: Machine_, addr: SocketAddr) -> Node {
        Node {
            machine,
            addr,
            alive: true,
            store: MemoryStore::default(),
            corrupt: BTreeSet::new(),
            silent: false,
            held_hashes: None,
            next_inbound: 0,
        }
    }

    fn machine(&self) -> &dyn Machine {
        match &self.machine {
            Machine_::Tracker(t) => t.as_ref(),
            Machine_::Peer(p) => p.as_ref(),
        }
    }

    fn machine_mut(&mut self) -> &mut dyn Machine {
        match &mut self.machine {
            Machine_::Tracker(t) => t.as_mut(),
            Machine_::Peer(p) => p.as_mut(),
        }
    }
}

/// The label address of node `ix` (never opened: the harness has no sockets).
fn addr(ix: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (ix / 250) as u8, (ix % 250) as u8 + 1], 7000))
}

/// `len` bytes of deterministic content and its manifest with pieces of `piece_size` bytes.
pub fn file(len: usize, piece_size: u32, seed: u8) -> (Vec<u8>, Manifest) {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect();
    let mut builder = ManifestBuilder::new("file.bin".into(), piece_size).expect("valid piece size");
    builder.update(&bytes);
    (bytes, builder.finish().expect("valid manifest"))
}

/// A tracker's configuration for `seed`, with the id derived from it.
fn tracker_config(seed: u64) -> TrackerConfig {
    TrackerConfig { peer_id: PeerId::from_seed(seed), seed, ..TrackerConfig::default() }
}
