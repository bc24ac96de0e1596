//! The world: one scenario's network, stores, timers and scenario actions around the central
//! [`Queue`], plus the event-queue driver [`run_queue`].
//!
//! The world never owns or calls a machine. It hands its driver [`Step`]s — start this machine,
//! stop that one, give this input to that one — and takes back what the machine output
//! ([`World::after_step`]). That split is what lets two drivers share one network and fault
//! model: [`run_queue`] steps machines in a plain loop (scale, property tests) and
//! [`crate::node::run_actix`] steps them as actix actors on tokio's paused clock (scenario runs).
//! Both feed the same inputs in the same order, so they produce the same trace.
//!
//! What the world does with outputs is delivery only: messages go to the network, storage and
//! hashing complete at once against the peer's [`Store`], events go to the trace and the
//! outcome. No protocol or scheduling decision is made here.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use p2p_core::limits::TTL_INTERVALS_COUNT;
use p2p_core::rng::Rng;
use p2p_core::small::VecMap;
use p2p_core::wire::{Message, RejectReason};
use p2p_core::{
    Command, CommandError, ConnId, FileId, Input, Output, Peer, PeerConfig, PieceIndex, Resume, Time, Tracker,
    TrackerConfig,
};

use crate::network::{node_addr, tracker_addr, Network, Sent, LISTEN_PORT};
use crate::node::NodeMachine;
use crate::queue::{Item, Queue};
use crate::report::{Outcome, PeerSummary};
use crate::scenario::{tracker_name, ActionKind, NodeIdx, Role, Scenario};
use crate::store::{Content, Store};
use crate::trace::Trace;

/// How long a peer that left keeps its machine (to flush its goodbyes) before it vanishes.
const LEAVE_GRACE: Duration = Duration::from_secs(1);

/// What a driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Start this machine for the node.
    Spawn(NodeIdx, NodeMachine),
    /// Stop the node's machine (crash, leave, tracker restart).
    Kill(NodeIdx),
    /// Give the node's machine this input, drain it, and call [`World::after_step`].
    Input(NodeIdx, Input),
    /// Give the node's machine this local command (`p2p_core::step_command`), drain it, and
    /// call [`World::after_command`].
    Command(NodeIdx, Box<Command>),
}

#[derive(Debug)]
pub(crate) struct NodeState {
    pub(crate) name: String,
    pub(crate) running: bool,
    timer: Option<Time>,
    timer_fired: Option<Time>,
    pub(crate) store: Store,
    pub(crate) summary: PeerSummary,
    /// Last time each tracker (by number) received anything from this node.
    pub(crate) heard_by_tracker: VecMap<usize, Time>,
    /// The last located answer told in the story, to tell only changes.
    pub(crate) story_located: Option<String>,
    /// Block requests outstanding per connection (as a downloader).
    pub(crate) in_flight: VecMap<ConnId, usize>,
}

/// One run's state; see the module docs.
#[derive(Debug)]
pub struct World {
    pub(crate) scenario: Scenario,
    pub(crate) seed: u64,
    pub(crate) content: Content,
    /// The file's id (hashing the manifest on every storage call would dominate a large run).
    pub(crate) file_id: FileId,
    pub(crate) network: Network,
    pub(crate) queue: Queue,
    pub(crate) nodes: Vec<NodeState>,
    /// Each node's role (the trackers' honest), by node: read for every message sent, so kept
    /// apart from the scenario's peer specs, whose other fields it would pull into the cache.
    pub(crate) roles: Vec<Role>,
    pending: VecDeque<Step>,
    pub(crate) now: Time,
    pub(crate) trace: Trace,
    pub(crate) outcome: Outcome,
    ended: bool,
}

/// Runs `scenario` with `seed` on the event-queue driver.
pub fn run_queue(scenario: &Scenario, seed: u64, trace: Option<Box<dyn Write>>) -> (Outcome, Option<std::io::Error>) {
    let mut world = World::new(scenario, seed, trace);
    let mut machines: Vec<Option<NodeMachine>> = (0..world.nodes.len()).map(|_| None).collect();
    let mut outputs = Vec::new();
    while let Some((now, step)) = world.next_step() {
        match step {
            Step::Spawn(node, machine) => machines[node.0] = Some(machine),
            Step::Kill(node) => machines[node.0] = None,
            Step::Input(node, input) => {
                let Some(machine) = machines[node.0].as_mut() else {
                    continue;
                };
                let timeout = p2p_core::step(machine, now, input, |output| outputs.push(output));
                world.after_step(node, &mut outputs, timeout);
            }
            Step::Command(node, command) => {
                let Some(machine) = machines[node.0].as_mut() else {
                    continue;
                };
                let (timeout, refused) = crate::node::step_command(machine, now, *command, &mut outputs);
                world.after_command(node, &mut outputs, timeout, refused);
            }
        }
    }
    world.finish()
}

impl World {
    /// A world at time zero: the tracker starting, every scenario action queued.
    pub fn new(scenario: &Scenario, seed: u64, trace: Option<Box<dyn Write>>) -> World {
        let file = &scenario.file;
        let content = Content::generate(seed, &file.name, file.size_bytes, file.piece_size_bytes);
        let trackers = scenario.tracker.count;
        let mut links = vec![scenario.tracker.link];
        links.extend(scenario.peers.iter().map(|p| p.link));
        links.extend((1..trackers).map(|_| scenario.tracker.link));
        let mut nodes = vec![NodeState::new(tracker_name(0), Store::default())];
        for peer in &scenario.peers {
            let chunks = peer.holds.iter().flat_map(|p| content.manifest.chunks_of(PieceIndex(*p))).map(|c| c.0);
            nodes.push(NodeState::new(peer.name.clone(), Store::seeded(chunks)));
        }
        nodes.extend((1..trackers).map(|number| NodeState::new(tracker_name(number), Store::default())));
        let mut roles = vec![Role::Honest];
        roles.extend(scenario.peers.iter().map(|p| p.role));
        roles.extend((1..trackers).map(|_| Role::Honest));
        let mut queue = Queue::default();
        for (i, action) in scenario.actions.iter().enumerate() {
            queue.push(action.at, Item::Action(i));
        }
        queue.push(scenario.end, Item::End);
        let outcome = Outcome {
            scenario: scenario.name.clone(),
            seed,
            file_size_bytes: file.size_bytes,
            chunk_count: content.manifest.chunk_count(),
            chunks_per_piece: content.manifest.chunks_per_piece(),
            ..Outcome::default()
        };
        let mut world = World {
            scenario: scenario.clone(),
            seed,
            file_id: content.manifest.file_id(),
            content,
            network: Network::with_trackers(seed, links, trackers),
            queue,
            nodes,
            roles,
            pending: VecDeque::new(),
            now: Time::ZERO,
            trace: Trace::new(trace),
            outcome,
            ended: false,
        };
        for (i, peer) in scenario.peers.iter().enumerate() {
            if peer.role == Role::NoKey {
                world.network.lacks_key(NodeIdx(i + 1));
            }
        }
        for number in 0..trackers {
            world.start_tracker(scenario.tracker_node(number), "starts");
        }
        world
    }

    /// The next step for the driver and the virtual time it happens at; `None` at the end.
    pub fn next_step(&mut self) -> Option<(Time, Step)> {
        loop {
            self.report_sent();
            if let Some(step) = self.pending.pop_front() {
                return Some((self.now, step));
            }
            if self.ended {
                return None;
            }
            let (at, item) = self.queue.pop()?;
            self.now = at;
            self.outcome.events += 1;
            if let Some(step) = self.take(item) {
                return Some((at, step));
            }
        }
    }

    /// Carries out what `node`'s machine output after its last step (draining `outputs`), and
    /// keeps its timer.
    pub fn after_step(&mut self, node: NodeIdx, outputs: &mut Vec<Output>, timeout: Option<Time>) {
        for output in outputs.drain(..) {
            self.dispatch(node, output);
        }
        self.set_timer(node, timeout);
    }

    /// [`World::after_step`] for a command, which `refused` says the machine refused (the
    /// world built it, so a refusal is the simulator's mistake, noted in the trace).
    pub fn after_command(
        &mut self,
        node: NodeIdx,
        outputs: &mut Vec<Output>,
        timeout: Option<Time>,
        refused: Option<CommandError>,
    ) {
        if let Some(refused) = refused {
            self.log(node, format_args!("refused a command: {refused}"));
        }
        self.after_step(node, outputs, timeout);
    }

    /// Ends the run: the outcome and the trace's write error, if any.
    pub fn finish(mut self) -> (Outcome, Option<std::io::Error>) {
        let peers = self.scenario.peers.len();
        for (i, node) in self.nodes.iter().enumerate().skip(1).take(peers) {
            let mut summary = node.summary.clone();
            summary.name.clone_from(&node.name);
            summary.chunks = node.store.verified(&self.content).count();
            summary.finalized = node.store.is_finalized();
            summary.running = node.running && self.network.incarnation(NodeIdx(i)) > 0;
            summary.bytes_up = self.network.data_bytes_up(NodeIdx(i));
            self.outcome.peers.push(summary);
        }
        self.outcome.ended_at = self.now;
        let (digest, lines, error) = self.trace.finish();
        self.outcome.trace_digest = digest;
        self.outcome.trace_lines = lines;
        (self.outcome, error)
    }

    /// The node's name, for traces and stories.
    pub(crate) fn name(&self, node: NodeIdx) -> &str {
        &self.nodes[node.0].name
    }

    /// The name of the node at `addr` (or the address when nobody is there).
    pub(crate) fn name_at(&self, addr: SocketAddr) -> Cow<'_, str> {
        node_name(&self.network, &self.nodes, addr)
    }

    /// Records a trace line about `node` now.
    pub(crate) fn log(&mut self, node: NodeIdx, text: std::fmt::Arguments<'_>) {
        let now = self.now;
        self.trace.record(now, &self.nodes[node.0].name, text);
    }

    /// Queues a local command for `node`'s current life, at the current time.
    fn command(&mut self, node: NodeIdx, command: Command) {
        let incarnation = self.network.incarnation(node);
        self.queue.push(self.now, Item::Command { node, incarnation, command: Box::new(command) });
    }

    /// Queues an input for `node`'s current life, at the current time.
    pub(crate) fn local(&mut self, node: NodeIdx, input: Input) {
        let incarnation = self.network.incarnation(node);
        self.queue.push(self.now, Item::Local { node, incarnation, input });
    }

    fn is_current(&self, node: NodeIdx, incarnation: u32) -> bool {
        self.nodes[node.0].running && self.network.incarnation(node) == incarnation
    }

    /// Turns a due item into a step, or handles it here (actions, stale items).
    fn take(&mut self, item: Item) -> Option<Step> {
        match item {
            Item::End => {
                self.ended = true;
                None
            }
            Item::Action(i) => {
                let action = self.scenario.actions[i].kind.clone();
                self.act(action);
                None
            }
            Item::Timer { node, incarnation, wanted } => {
                let state = &mut self.nodes[node.0];
                if !(state.running && self.network.incarnation(node) == incarnation && state.timer == Some(wanted)) {
                    return None;
                }
                state.timer = None;
                state.timer_fired = Some(wanted);
                Some(Step::Input(node, Input::Timeout))
            }
            Item::Command { node, incarnation, command } => {
                self.is_current(node, incarnation).then_some(Step::Command(node, command))
            }
            Item::Local { node, incarnation, input } => {
                if !self.is_current(node, incarnation) {
                    return None;
                }
                if self.adversary_input(node, &input) {
                    return None;
                }
                if let Input::Disconnected { conn } = input {
                    self.on_disconnected(node, conn, "reset");
                }
                Some(Step::Input(node, input))
            }
            Item::Wire { link, end, input } => {
                let (node, incarnation, from) = self.network.arrive(self.now, (link, end), &input, &mut self.queue)?;
                if !self.is_current(node, incarnation) {
                    return None;
                }
                self.on_arrival(node, from, &input);
                if self.adversary_input(node, &input) {
                    return None;
                }
                Some(Step::Input(node, input))
            }
            Item::UplinkDone { node, transmission } => {
                self.network.uplink_done(self.now, node, transmission, &mut self.queue);
                None
            }
            Item::Vanish { node, incarnation } => {
                if self.is_current(node, incarnation) {
                    self.log(node, format_args!("is gone"));
                    self.stop(node);
                }
                None
            }
        }
    }

    /// `Data` frames that left their sender's uplink since the last step are reported to it,
    /// right after that step (a machine that stopped hears nothing).
    fn report_sent(&mut self) {
        let (nodes, pending) = (&self.nodes, &mut self.pending);
        self.network.take_reports(|node, conn, frames| {
            if nodes[node.0].running {
                pending.push_back(Step::Input(node, Input::Sent { conn, data_frames: frames }));
            }
        });
    }

    fn on_arrival(&mut self, node: NodeIdx, from: NodeIdx, input: &Input) {
        if let Some(tracker) = self.scenario.tracker_number(node) {
            self.nodes[from.0].heard_by_tracker.insert(tracker, self.now);
        }
        match input {
            Input::Connected { conn, .. } => {
                let other = self.nodes[from.0].name.clone();
                self.log(node, format_args!("{conn} connected with {other}"));
            }
            Input::Disconnected { conn } => self.on_disconnected(node, *conn, "closed by the other end"),
            Input::Message { conn, message: Message::Data { chunk, offset, bytes, .. } } => {
                self.nodes[node.0].summary.bytes_down += bytes.len() as u64;
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                self.outcome.block_arrived(node, from, chunk.0, *offset, len);
                self.request_answered(node, *conn);
            }
            // From a peer taking part in room calls (every honest one here), `Busy` answers
            // every request outstanding on the connection.
            Input::Message { conn, message: Message::Reject { reason: RejectReason::Busy, .. } } => {
                self.nodes[node.0].in_flight.remove(conn);
            }
            Input::Message { conn, message: Message::Reject { .. } } => self.request_answered(node, *conn),
            _ => {}
        }
    }

    fn on_disconnected(&mut self, node: NodeIdx, conn: ConnId, why: &str) {
        self.nodes[node.0].in_flight.remove(&conn);
        self.log(node, format_args!("{conn} disconnected ({why})"));
    }

    /// A request `node` sent on `conn` was answered (data, a reject) or withdrawn (a cancel).
    pub(crate) fn request_answered(&mut self, node: NodeIdx, conn: ConnId) {
        if let Some(count) = self.nodes[node.0].in_flight.get_mut(&conn) {
            *count = count.saturating_sub(1);
        }
    }

    fn set_timer(&mut self, node: NodeIdx, timeout: Option<Time>) {
        let state = &mut self.nodes[node.0];
        match timeout {
            // A machine that still asks for a timer that already fired has not moved it; firing
            // it again at once would loop forever, so it waits for the next input instead.
            Some(wanted) if state.timer != Some(wanted) && state.timer_fired != Some(wanted) => {
                state.timer = Some(wanted);
                let incarnation = self.network.incarnation(node);
                self.queue.push(wanted.max(self.now), Item::Timer { node, incarnation, wanted });
            }
            Some(_) => {}
            None => state.timer = None,
        }
    }

    fn act(&mut self, action: ActionKind) {
        match action {
            ActionKind::Join(node) => self.start_peer(node, "joins"),
            ActionKind::Restart(node) => self.start_peer(node, "restarts"),
            ActionKind::Leave(node) => self.leave(node),
            ActionKind::Crash(node) if self.nodes[node.0].running => {
                self.tell(node, "CRASHES".to_owned());
                self.stop(node);
            }
            ActionKind::Crash(node) => self.log(node, format_args!("cannot crash: not running")),
            ActionKind::Corrupt(node, pieces) => {
                let manifest = &self.content.manifest;
                let chunks: Vec<u32> =
                    pieces.iter().flat_map(|p| manifest.chunks_of(PieceIndex(*p))).map(|c| c.0).collect();
                let hit = self.nodes[node.0].store.corrupt(&self.content, &chunks);
                self.tell(node, format!("its copy of chunks {hit:?} goes bad"));
            }
            ActionKind::Partition(nodes) => {
                let names: Vec<&str> = nodes.iter().map(|n| self.name(*n)).collect();
                let text = format!("partition: {} cut off from the rest", names.join(", "));
                self.tell_network(text);
                self.network.partition(self.now, &nodes, &mut self.queue);
            }
            ActionKind::Heal => {
                self.tell_network("partition heals".to_owned());
                self.network.heal();
            }
            ActionKind::TrackerRestart => {
                self.tell(NodeIdx::TRACKER, "RESTARTS with empty state".to_owned());
                self.stop(NodeIdx::TRACKER);
                self.start_tracker(NodeIdx::TRACKER, "is back");
            }
            ActionKind::TrackerStop(node) if self.nodes[node.0].running => {
                self.tell(node, "STOPS".to_owned());
                self.stop(node);
            }
            ActionKind::TrackerStop(node) => self.log(node, format_args!("cannot stop: not running")),
            ActionKind::TrackerStart(node) if self.nodes[node.0].running => {
                self.log(node, format_args!("already running; start ignored"));
            }
            ActionKind::TrackerStart(node) => {
                self.tell(node, "STARTS again with empty state".to_owned());
                self.start_tracker(node, "is back");
            }
        }
    }

    fn start_tracker(&mut self, node: NodeIdx, verb: &str) {
        let incarnation = self.network.node_up(node);
        self.nodes[node.0].running = true;
        self.nodes[node.0].timer = None;
        self.nodes[node.0].timer_fired = None;
        let seed = Rng::derive_seed(self.seed, &format!("{}/{incarnation}", self.nodes[node.0].name));
        let peer_id = self.network.peer_id(node);
        let config = TrackerConfig { peer_id, seed, announce_interval: self.scenario.tracker.announce_interval };
        let addr = self.network.addr(node);
        self.log(node, format_args!("{verb} at {addr}"));
        self.pending.push_back(Step::Spawn(node, NodeMachine::Tracker(Box::new(Tracker::new(config)))));
    }

    fn start_peer(&mut self, node: NodeIdx, verb: &str) {
        if self.nodes[node.0].running {
            self.log(node, format_args!("already running; {verb} ignored"));
            return;
        }
        let incarnation = self.network.node_up(node);
        let spec = &self.scenario.peers[node.0 - 1];
        let seed = Rng::derive_seed(self.seed, &format!("peer/{}/{incarnation}", spec.name));
        let mut config = PeerConfig::new(self.network.peer_id(node), seed, tracker_addr(0), LISTEN_PORT);
        config.trackers = (0..self.scenario.tracker.count).map(tracker_addr).collect();
        config.upload_limit_bytes_per_s = spec.upload_limit_bytes_per_s;
        config.announce_interval = self.scenario.tracker.announce_interval;
        let wants = spec.wants;
        let state = &mut self.nodes[node.0];
        state.running = true;
        state.timer = None;
        state.timer_fired = None;
        state.story_located = None;
        let have = state.store.verified(&self.content);
        let resume = (have.count() > 0 || state.store.is_allocated()).then(|| Resume {
            manifest: self.content.manifest.clone(),
            have: have.clone(),
            lists: state.store.lists(),
        });
        let machine = Peer::new(config);
        let chunks = format!("{} of {} chunks", have.count(), have.len());
        self.tell(node, format!("{verb} at {} holding {chunks}", node_addr(node)));
        self.pending.push_back(Step::Spawn(node, NodeMachine::Peer(Box::new(machine))));
        self.adversary_joined(node);
        let manifest = self.content.manifest.clone();
        if wants && !self.nodes[node.0].store.is_finalized() {
            self.command(node, Command::Get { file_id: self.file_id, resume });
        } else if have.count() > 0 {
            self.command(node, Command::Share { manifest, have });
        }
    }

    fn leave(&mut self, node: NodeIdx) {
        if !self.nodes[node.0].running {
            self.log(node, format_args!("cannot leave: not running"));
            return;
        }
        self.tell(node, "leaves".to_owned());
        self.network.stop_accepting(node);
        self.command(node, Command::Leave);
        let incarnation = self.network.incarnation(node);
        self.queue.push(self.now + LEAVE_GRACE, Item::Vanish { node, incarnation });
    }

    /// The node's machine stops now; its links reset.
    fn stop(&mut self, node: NodeIdx) {
        self.network.node_down(self.now, node, &mut self.queue);
        let state = &mut self.nodes[node.0];
        state.running = false;
        state.timer = None;
        state.in_flight = VecMap::new();
        self.pending.push_back(Step::Kill(node));
    }

    /// `text` goes to the trace and the story.
    pub(crate) fn tell(&mut self, node: NodeIdx, text: String) {
        self.log(node, format_args!("{text}"));
        let who = self.nodes[node.0].name.clone();
        self.outcome.story.push(crate::report::StoryLine { at: self.now, who, text });
    }

    /// `text` about the network goes to the trace and the story.
    fn tell_network(&mut self, text: String) {
        self.trace.record(self.now, "network", format_args!("{text}"));
        let line = crate::report::StoryLine { at: self.now, who: "network".to_owned(), text };
        self.outcome.story.push(line);
    }

    /// The tracker's time-to-live for a peer that stops announcing.
    pub(crate) fn tracker_ttl(&self) -> Duration {
        self.scenario.tracker.announce_interval * TTL_INTERVALS_COUNT
    }

    /// Hands a message to the network.
    pub(crate) fn transmit(&mut self, node: NodeIdx, conn: ConnId, message: Message, size_bytes: u64) {
        if let Sent::Lost = self.network.send(self.now, node, conn, (message, size_bytes), &mut self.queue) {
            self.log(node, format_args!("{conn} lost a message: connection reset"));
        }
    }
}

impl NodeState {
    fn new(name: String, store: Store) -> NodeState {
        NodeState {
            name,
            running: false,
            timer: None,
            timer_fired: None,
            store,
            summary: PeerSummary::default(),
            heard_by_tracker: VecMap::new(),
            story_located: None,
            in_flight: VecMap::new(),
        }
    }
}

/// The name of the node at `addr` among `nodes` (or the address when nobody is there); for
/// callers that hold other fields of the world mutably.
pub(crate) fn node_name<'a>(network: &Network, nodes: &'a [NodeState], addr: SocketAddr) -> Cow<'a, str> {
    network.node_at(addr).map_or_else(|| addr.to_string().into(), |n| nodes[n.0].name.as_str().into())
}
