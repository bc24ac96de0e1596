//! The virtual network: addresses, links, latency with jitter, bandwidth, loss and partitions,
//! all from one seeded RNG.
//!
//! The network owns every connection's state and decides *when* each input reaches a machine;
//! it pushes those inputs onto the central [`Queue`] and never calls a machine itself.
//!
//! Model, per frame of N bytes from `a` to `b` (N is the wire codec's real frame size):
//! - it waits in the connection's queue (control frames ahead of `Data`) until `a`'s send
//!   buffer for that connection has room ([`crate::uplink`]);
//! - it occupies the link for its N bytes plus the headers of the TCP segments that carry it
//!   ([`link_bytes`]: 66 bytes per 1,448, as a kernel shaper counts them), so a link's rate
//!   is its rate on the wire, not of payload;
//! - it leaves the buffer, front first, at its flow's rate, and a `Data` frame that left is
//!   reported to `a`'s machine as `Input::Sent`. A flow's rate comes from water-filling
//!   `a`'s up-rate over `a`'s active flows, each capped at its receiver's downlink share: a
//!   sender's leftover goes to its other flows. A receiver's share is weighted max-min fair
//!   among its active inbound flows: flows their senders hold below their share keep their
//!   rates and the others split what those leave, a flow from a sender whose uplink is faster
//!   than the downlink taking [`UNQUEUED_SENDER_WEIGHT`] times as much as one from a slower
//!   sender, as TCP flows through one shaped downlink do. When a sender's rates move, its
//!   receivers' shares are computed again, and a share that moved re-settles the receiver's
//!   other senders: a downlink is not given more than its rate, give or take the 1/16 slack
//!   with which a moved rate or share is passed on. Passing changes on can chain across the
//!   swarm, so one event follows at most [`SHARE_FOLLOWS_PER_SETTLE_MAX`] receivers (the rest
//!   catch up at their next change), and a downlink with more than [`FAIR_SHARE_FLOWS_MAX`]
//!   inbound flows (a tracker's) is split by weight alone;
//! - an uplink given a standing queue ([`LinkSpec::queue`], none by default) holds it while
//!   it sends bulk data: a loss-based TCP fills the FIFO of a shaper such as `tc tbf` until
//!   the FIFO drops, so every frame leaving such an uplink, control frames on idle
//!   connections too, waits that long behind the bytes in front of it. The queue drains at the
//!   link's rate once `Data` stops leaving: a frame leaving `t` after the last `Data` frame
//!   waits `queue - t`. The flows' shares of the rate do not change, only when their frames
//!   arrive;
//! - it reaches `b` one link latency (the larger of the two nodes' latencies) plus a random
//!   jitter after it left (and its standing queue), never before an earlier frame of the same
//!   link direction (a link is an ordered stream, like TCP). The downlink is not a second
//!   queue: the caps above keep a receiver's inbound rates within its down-rate;
//! - with the link's loss probability (the larger of the two nodes' losses) it is lost; a TCP
//!   stream never silently loses data, so a lost frame is sent again and holds back everything
//!   behind it on that connection: a frame of [`FAST_RETRANSMIT_SEGMENTS_MIN`] segments or
//!   more one round trip per loss (the segments behind the lost one bring duplicate
//!   acknowledgements, and the sender resends it, as fast retransmit and RACK do), a shorter
//!   one after a retransmission timeout that doubles on each further loss (nothing behind it
//!   tells the sender). After [`LOSSES_BEFORE_RESET_COUNT`] losses in a row the connection
//!   resets: both ends see `Disconnected`. Retransmissions cost time, not uplink bytes.
//!
//! Rates change only at events (a flow starts or goes idle, a receiver's count changes), and
//! each uplink has at most one wake-up pending, at or before its next frame departure. A link
//! whose two ends are both unlimited has no flow at all: its frames leave at once.
//!
//! A partition puts nodes into groups: links between groups are reset, and connecting across
//! groups fails (as does connecting to a node that is down). Invariant: every link in `links`
//! has each end in `by_conn` exactly while that end is open.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use p2p_core::rng::Rng;
use p2p_core::small::VecSet;
use p2p_core::wire::Message;
use p2p_core::{ConnId, Input, PeerId, Time};

use crate::queue::{Item, LinkId, Queue};
use crate::scenario::{LinkSpec, NodeIdx};
use crate::uplink::{Change, Flow, Frame, Uplink};

/// The port every simulated node listens on (addresses are labels; no socket is opened).
pub const LISTEN_PORT: u16 = 7000;
/// Consecutive losses of one message after which a connection resets (TCP giving up).
pub const LOSSES_BEFORE_RESET_COUNT: u32 = 4;
/// Shortest retransmission timeout (doubling per further loss); at least two latencies.
const RETRANSMIT_TIMEOUT_MIN: Duration = Duration::from_millis(200);
/// Segments a frame needs for a loss in it to be repaired by fast retransmit (three duplicate
/// acknowledgements from the segments behind the lost one) rather than by a timeout.
pub const FAST_RETRANSMIT_SEGMENTS_MIN: u64 = 4;

/// Payload bytes one TCP segment carries (an Ethernet MTU of 1,500 less the IPv4 and TCP
/// headers with timestamps).
pub const SEGMENT_PAYLOAD_BYTES: u64 = 1448;
/// Bytes of headers each segment adds on the link: Ethernet 14, IPv4 20, TCP with the
/// timestamp option 32 — what a Linux shaper (`tc tbf`) counts against its rate beside the
/// payload, so a link's payload rate is 1,448/1,514 of its rate. The transport's own framing
/// (a 2-byte length and a 16-byte tag per sealed chunk of up to 64 KiB) adds well under 0.1 %
/// and is left out.
pub const SEGMENT_HEADER_BYTES: u64 = 66;

/// How far (as a fraction) a receiver's downlink share may move before its other senders are
/// re-settled, and a flow's rate before its receiver's share is computed again; see
/// [`Network::apply_share`] and [`Network::reshare`].
const SHARE_SLACK: f64 = 1.0 / 16.0;

/// Most active inbound flows a downlink shares max-min fairly, and most active flows of an
/// uplink whose moved rates are passed on to their receivers. Past it a downlink is split
/// equally: such a node is a tracker, whose many flows are short replies and requests, and a
/// scan of them at every change would cost the simulator its scale.
pub const FAIR_SHARE_FLOWS_MAX: usize = 64;

/// Weight in a shaped downlink's share of a flow whose sender's uplink is faster than that
/// downlink; other flows weigh one. TCP flows through one shaped downlink do not split it
/// equally: a flow whose sender's uplink is the slower link also waits in the queue its
/// sender's own shaper keeps and loses packets there, and a loss-based TCP's rate falls with
/// its round trip and its loss rate. A sender whose uplink is faster than the downlink seldom
/// queues at home, so its flows take more. Two is what namespace runs with a seeder faster
/// than the leechers' downlinks show, in the seeder's part of each leecher's chunks and in
/// the bytes it sends (BENCHMARKS.md, "A faster sender's share of a shaped downlink").
pub const UNQUEUED_SENDER_WEIGHT: f64 = 2.0;

/// Most receivers whose downlink share one event computes again because a sender's rates
/// moved (the rest catch up at their next change).
pub const SHARE_FOLLOWS_PER_SETTLE_MAX: usize = 64;

/// First source port the network gives the accepting side as the opener's address.
const EPHEMERAL_PORT_FIRST: u16 = 40_000;
const EPHEMERAL_PORT_COUNT: u64 = 20_000;

/// What became of a message handed to [`Network::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// It is on its way (queued for the sender's send buffer, in it, or already scheduled to
    /// arrive).
    Queued,
    /// It was lost too often and the connection reset.
    Lost,
    /// The connection was already gone; the message is dropped, as a closed socket would.
    NoLink,
}

#[derive(Debug)]
struct NetNode {
    addr: SocketAddr,
    /// The id the node proves when it connects (its key's, on TCP); kept across restarts.
    peer_id: PeerId,
    link: LinkSpec,
    up: bool,
    accepting: bool,
    incarnation: u32,
    group: u32,
    uplink: Uplink,
    /// Active flows into this node, as `(sender, flow)`; kept only for a limited downlink,
    /// which shares its rate among them. A sorted vector, compact for the lookups at
    /// every flow's start and end.
    inbound: VecSet<(NodeIdx, Flow)>,
    /// The senders of `inbound`, flow by flow: their up-rates summed, how many are unlimited,
    /// and how many are faster than the downlink. While the sum is within the down-rate the
    /// downlink cannot be full.
    inbound_up: InboundUp,
    /// The downlink share per unit of weight last applied to the senders of `inbound`.
    share_applied: f64,
    /// Payload bytes of `Data` frames that left the uplink, over every life.
    data_bytes_up: u64,
    /// When the last `Data` frame left the uplink (the standing queue drains from then on).
    data_left_at: Option<Time>,
    inbound_next: u64,
    /// It lacks the swarm key: every handshake with it fails (see [`Network::lacks_key`]).
    keyless: bool,
}

impl NetNode {
    /// Whether the active inbound flows, with one more from a sender of up-rate `joining`
    /// (`Some(None)`: unlimited), could together send faster than the downlink takes.
    fn downlink_may_fill(&self, joining: Option<Option<u64>>) -> bool {
        let Some(down) = self.link.down_bytes_per_s else { return false };
        let mut up = self.inbound_up;
        if let Some(rate) = joining {
            up.add(rate, down);
        }
        up.unlimited > 0 || up.bytes_per_s > down
    }
}

/// Up-rates of a receiver's senders, one entry per active inbound flow.
#[derive(Clone, Copy, Debug, Default)]
struct InboundUp {
    bytes_per_s: u64,
    unlimited: u32,
    /// Flows whose sender's uplink is faster than the downlink (unlimited ones too).
    unqueued: u32,
}

impl InboundUp {
    fn add(&mut self, rate: Option<u64>, down: u64) {
        match rate {
            Some(rate) => self.bytes_per_s += rate,
            None => self.unlimited += 1,
        }
        self.unqueued += u32::from(unqueued(rate, down));
    }

    fn remove(&mut self, rate: Option<u64>, down: u64) {
        match rate {
            Some(rate) => self.bytes_per_s -= rate,
            None => self.unlimited -= 1,
        }
        self.unqueued -= u32::from(unqueued(rate, down));
    }

    /// The weights of `flows` flows with these senders, summed.
    fn weight(&self, flows: usize) -> f64 {
        flows as f64 + (UNQUEUED_SENDER_WEIGHT - 1.0) * f64::from(self.unqueued)
    }
}

/// Whether a sender of up-rate `up` (`None`: unlimited) is faster than a downlink of `down`.
fn unqueued(up: Option<u64>, down: u64) -> bool {
    up.is_none_or(|up| up > down)
}

/// The weight in a downlink of `down` of a flow from a sender of up-rate `up`.
fn flow_weight(up: Option<u64>, down: u64) -> f64 {
    if unqueued(up, down) {
        UNQUEUED_SENDER_WEIGHT
    } else {
        1.0
    }
}

#[derive(Clone, Copy, Debug)]
struct End {
    node: NodeIdx,
    conn: ConnId,
    incarnation: u32,
    open: bool,
}

#[derive(Debug)]
struct Link {
    ends: [End; 2],
    /// Latest arrival scheduled towards each end, to keep each direction in order.
    last_arrival: [Time; 2],
    /// When the acceptor hears of the link (its `Connected` arrives).
    accepted_at: Time,
}

/// Links, nodes and the RNG behind jitter and loss.
#[derive(Debug)]
pub struct Network {
    rng: Rng,
    nodes: Vec<NetNode>,
    /// The first node after the peers (the second tracker, if any).
    peers_end: usize,
    /// Links by id (ids count up from 0; a closed link's slot stays empty).
    links: Vec<Option<Link>>,
    /// Every node's open connections and their links. Looked up for every frame sent, and never
    /// iterated: one hash probe where a search per node's sorted list of its connections missed
    /// the cache at every step.
    by_conn: ConnLinks,
    /// `Sent` reports due, as `(sender, conn, frames)`, until the world takes them.
    reports: Vec<(NodeIdx, ConnId, u32)>,
    /// Nodes whose uplink rates must be recomputed now (see [`Network::settle`]).
    unsettled: Vec<NodeIdx>,
    /// Scratch for [`Uplink::advance`].
    departed: Vec<(Flow, Frame)>,
    changes: Vec<Change>,
    /// Scratch for [`Network::apply_share`].
    senders: Vec<(NodeIdx, Flow)>,
    /// Scratch for [`Network::reshare`]: rates before and after, and the receivers to follow.
    rates: Vec<(NodeIdx, f64)>,
    moved: Vec<NodeIdx>,
    /// Scratch for [`Network::downlink_share`]: the rate and weight of each inbound flow its
    /// sender may hold below its share.
    holdable: Vec<(f64, f64)>,
    /// Flows, as `(sender, flow)`, already gone from their sender's uplink whose receiver has
    /// not been told yet (several went idle at once, or the sender went down): until it is,
    /// such a flow is still in its receiver's `inbound`. Every other flow in an `inbound` is
    /// active in its sender's uplink.
    untold: Vec<(NodeIdx, Flow)>,
}

/// The address of tracker number `number` (0-based): 10.0.0.1, 10.0.0.2, ….
pub fn tracker_addr(number: usize) -> SocketAddr {
    // Scenarios have at most `TRACKERS_PER_PEER_MAX` trackers.
    let host = u8::try_from(number + 1).unwrap_or(u8::MAX);
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, host), LISTEN_PORT))
}

/// The address of node `node` among a single tracker's world (or the first tracker and the
/// peers of any world): the tracker is 10.0.0.1, peers count up from 10.0.1.1.
pub fn node_addr(node: NodeIdx) -> SocketAddr {
    if node == NodeIdx::TRACKER {
        return tracker_addr(0);
    }
    let i = node.0 - 1;
    // Scenarios have at most 100,000 peers, so this stays inside 10.0.0.0/8.
    let host = ((1 + i / 250) << 8) | (1 + i % 250);
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(0x0A00_0000 | host as u32), LISTEN_PORT))
}

/// The node whose address has `addr`'s host, if the host is one [`node_addr`] or
/// [`tracker_addr`] gives, the trackers after the first being nodes `peers_end`, …; the
/// inverse is arithmetic, so naming a node in a trace line costs no lookup.
fn node_of_addr(addr: SocketAddr, peers_end: usize) -> Option<NodeIdx> {
    let SocketAddr::V4(v4) = addr else { return None };
    let ip = u32::from(*v4.ip());
    if ip >> 24 != 0x0A {
        return None;
    }
    let (high, low) = ((ip >> 8) & 0xFFFF, ip & 0xFF);
    match (high, low) {
        (0, 1) => Some(NodeIdx::TRACKER),
        (0, 2..=255) => Some(NodeIdx(peers_end + low as usize - 2)),
        (1.., 1..=250) => Some(NodeIdx(((high - 1) * 250 + low) as usize)).filter(|node| node.0 < peers_end),
        _ => None,
    }
}

impl Network {
    /// A network of `links.len()` nodes with one tracker, all down, node `i` with link
    /// `links[i]`.
    pub fn new(seed: u64, links: Vec<LinkSpec>) -> Network {
        Network::with_trackers(seed, links, 1)
    }

    /// A network of `links.len()` nodes, all down, node `i` with link `links[i]`: the first
    /// tracker, the peers, then the other `trackers - 1` trackers.
    pub fn with_trackers(seed: u64, links: Vec<LinkSpec>, trackers: usize) -> Network {
        let peers_end = links.len() + 1 - trackers;
        let addr = |i: usize| if i >= peers_end { tracker_addr(i + 1 - peers_end) } else { node_addr(NodeIdx(i)) };
        let nodes: Vec<NetNode> = links
            .into_iter()
            .enumerate()
            .map(|(i, link)| NetNode {
                addr: addr(i),
                peer_id: PeerId::from_seed(Rng::derive_seed(seed, &format!("key/{i}"))),
                link,
                up: false,
                accepting: false,
                incarnation: 0,
                group: 0,
                uplink: Uplink::default(),
                inbound: VecSet::new(),
                inbound_up: InboundUp::default(),
                share_applied: f64::INFINITY,
                data_bytes_up: 0,
                data_left_at: None,
                inbound_next: 0,
                keyless: false,
            })
            .collect();
        Network {
            rng: Rng::from_seed(Rng::derive_seed(seed, "network")),
            nodes,
            peers_end,
            links: Vec::new(),
            by_conn: ConnLinks::default(),
            reports: Vec::new(),
            unsettled: Vec::new(),
            departed: Vec::new(),
            changes: Vec::new(),
            senders: Vec::new(),
            rates: Vec::new(),
            moved: Vec::new(),
            holdable: Vec::new(),
            untold: Vec::new(),
        }
    }

    /// The node at `addr`'s host (whatever the port), if any.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeIdx> {
        node_of_addr(addr, self.peers_end).filter(|node| node.0 < self.nodes.len())
    }

    /// The address of `node`.
    pub fn addr(&self, node: NodeIdx) -> SocketAddr {
        self.nodes[node.0].addr
    }

    /// The node listening at `addr` (its host and [`LISTEN_PORT`]), if any.
    fn listener_at(&self, addr: SocketAddr) -> Option<NodeIdx> {
        self.node_at(addr).filter(|_| addr.port() == LISTEN_PORT)
    }

    /// Whether the node is running.
    pub fn is_up(&self, node: NodeIdx) -> bool {
        self.nodes[node.0].up
    }

    /// The node's current life (bumped by every start).
    pub fn incarnation(&self, node: NodeIdx) -> u32 {
        self.nodes[node.0].incarnation
    }

    /// The id `node` proves to those it connects with: derived from the world's seed, it
    /// stands in for the key a node keeps in its store.
    pub fn peer_id(&self, node: NodeIdx) -> PeerId {
        self.nodes[node.0].peer_id
    }

    /// `node` does not hold the swarm key the others share: every connection it opens or is
    /// opened to it fails its handshake. The opener sees the connection fail, the acceptor
    /// nothing (a transport's failed handshake never reaches a machine).
    pub fn lacks_key(&mut self, node: NodeIdx) {
        self.nodes[node.0].keyless = true;
    }

    /// The node starts (again): a new life, reachable if its group allows.
    pub fn node_up(&mut self, node: NodeIdx) -> u32 {
        let n = &mut self.nodes[node.0];
        n.up = true;
        n.accepting = true;
        n.incarnation += 1;
        n.incarnation
    }

    /// The node accepts no new connections (it is leaving); its open links stay.
    pub fn stop_accepting(&mut self, node: NodeIdx) {
        self.nodes[node.0].accepting = false;
    }

    /// The node vanishes: every link it has is reset; the others hear of it after a latency.
    pub fn node_down(&mut self, now: Time, node: NodeIdx, queue: &mut Queue) {
        self.nodes[node.0].up = false;
        let cleared = self.nodes[node.0].uplink.clear();
        self.untold.extend(cleared.iter().map(|(flow, _)| (node, *flow)));
        for (flow, to) in cleared {
            self.idle_told(node, flow, to);
        }
        self.settle(now, node, queue);
        // Every link with an end here, including ones this node closed whose goodbye had not
        // left its (now cleared) uplink: the other end must still hear that the link is gone.
        let links: Vec<LinkId> =
            self.live_links().filter(|(_, l)| l.ends.iter().any(|e| e.node == node)).map(|(id, _)| id).collect();
        for link in links {
            self.reset(now, link, queue);
        }
    }

    /// Puts `nodes` in a new group, cut off from all others; links across groups reset.
    pub fn partition(&mut self, now: Time, nodes: &[NodeIdx], queue: &mut Queue) {
        let group = self.nodes.iter().map(|n| n.group).max().unwrap_or(0) + 1;
        for node in nodes {
            self.nodes[node.0].group = group;
        }
        let cut: Vec<LinkId> = self
            .live_links()
            .filter(|(_, l)| self.nodes[l.ends[0].node.0].group != self.nodes[l.ends[1].node.0].group)
            .map(|(id, _)| id)
            .collect();
        for link in cut {
            self.reset(now, link, queue);
        }
    }

    /// Every node back in one group.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
    }

    /// `from` opens connection `conn` to `addr`: both ends get `Connected`, or the opener gets
    /// `Disconnected` when nobody reachable listens there or either end lacks the swarm key.
    pub fn connect(&mut self, now: Time, from: NodeIdx, conn: ConnId, addr: SocketAddr, queue: &mut Queue) {
        let opener_id = self.nodes[from.0].peer_id;
        self.connect_as(now, (from, opener_id), conn, addr, queue);
    }

    /// As [`Network::connect`], with `from` proving the key of `opener_id` on this connection
    /// (an adversary holding keys besides its node's).
    pub fn connect_as(
        &mut self,
        now: Time,
        (from, opener_id): (NodeIdx, PeerId),
        conn: ConnId,
        addr: SocketAddr,
        queue: &mut Queue,
    ) {
        let target = self.listener_at(addr);
        let reachable = target.filter(|t| {
            let (t, from) = (&self.nodes[t.0], &self.nodes[from.0]);
            t.up && t.accepting && t.group == from.group && !t.keyless && !from.keyless
        });
        let latency = self.latency(from, target.unwrap_or(from));
        let Some(target) = reachable.filter(|t| *t != from) else {
            let incarnation = self.nodes[from.0].incarnation;
            let input = Input::Disconnected { conn };
            queue.push(now + latency * 2, Item::Local { node: from, incarnation, input });
            return;
        };
        let inbound = {
            let t = &mut self.nodes[target.0];
            t.inbound_next += 1;
            ConnId::Inbound(t.inbound_next)
        };
        let id = self.links.len() as LinkId;
        let port = EPHEMERAL_PORT_FIRST + (id % EPHEMERAL_PORT_COUNT) as u16;
        let opener_addr = SocketAddr::new(self.nodes[from.0].addr.ip(), port);
        let target_id = self.nodes[target.0].peer_id;
        let end = |node: NodeIdx, conn| End { node, conn, incarnation: self.nodes[node.0].incarnation, open: true };
        let ends = [end(from, conn), end(target, inbound)];
        let (accepted, opened) = (now + latency, now + latency * 2);
        self.links.push(Some(Link { ends, last_arrival: [opened, accepted], accepted_at: accepted }));
        self.by_conn.insert((from, conn), id);
        self.by_conn.insert((target, inbound), id);
        queue.push(
            accepted,
            Item::Wire {
                link: id,
                end: 1,
                input: Input::Connected { conn: inbound, remote: opener_addr, peer_id: opener_id },
            },
        );
        let input = Input::Connected { conn, remote: addr, peer_id: target_id };
        queue.push(opened, Item::Wire { link: id, end: 0, input });
    }

    /// `from` sends `message` of `size_bytes` on `conn`; its arrival is queued.
    pub fn send(
        &mut self,
        now: Time,
        from: NodeIdx,
        conn: ConnId,
        (message, size_bytes): (Message, u64),
        queue: &mut Queue,
    ) -> Sent {
        let Some(&id) = self.by_conn.get(&(from, conn)) else {
            return Sent::NoLink;
        };
        let Some(link) = self.link(id) else {
            return Sent::NoLink;
        };
        let side = usize::from(link.ends[0].node != from || link.ends[0].conn != conn);
        let to = link.ends[1 - side].node;
        // Like the latency, the larger of the two ends': a scenario's `loss` is the probability
        // that a message is lost on its way, not per end it passes.
        let loss = self.nodes[from.0].link.loss.max(self.nodes[to.0].link.loss);
        let mut losses = 0;
        while loss > 0.0 && self.rng.chance(loss) {
            losses += 1;
            if losses == LOSSES_BEFORE_RESET_COUNT {
                self.reset(now, id, queue);
                return Sent::Lost;
            }
        }
        let round_trip = self.latency(from, to) * 2;
        let retransmit_delay = if segments(size_bytes) >= FAST_RETRANSMIT_SEGMENTS_MIN {
            // The segments behind a lost one are acknowledged twice over: the sender resends it
            // a round trip later, and a lost resend is found the same way.
            round_trip * losses
        } else {
            RETRANSMIT_TIMEOUT_MIN.max(round_trip) * ((1u32 << losses) - 1)
        };
        let link_bytes = link_bytes(size_bytes);
        let (flow, frame) = ((id, 1 - side), Frame { message, size_bytes, link_bytes, retransmit_delay });
        if self.nodes[from.0].link.up_bytes_per_s.is_none() && self.nodes[to.0].link.down_bytes_per_s.is_none() {
            // Nothing limits the flow: the frame passes the buffer and leaves at once.
            if matches!(frame.message, Message::Data { .. }) {
                add_report(&mut self.reports, (from, conn, 1));
            }
            self.depart(now, from, flow, frame, queue);
            return Sent::Queued;
        }
        // Progress so far is counted at the old rates before the set of flows changes.
        self.advance(now, from, queue);
        // Only a flow that starts takes a cap: the share costs a scan of the receiver's senders,
        // which a frame queued behind others need not pay.
        let starts = !self.nodes[from.0].uplink.has_pending(flow);
        let cap = if starts { self.downlink_share(to, Some(from)) } else { f64::INFINITY };
        if self.nodes[from.0].uplink.push((flow, to, conn), frame, cap) {
            self.inbound_changed(from, flow, to, true);
        }
        self.settle(now, from, queue);
        Sent::Queued
    }

    /// `from`'s uplink wake-up `wake` is due: a frame may have finished leaving.
    pub fn uplink_done(&mut self, now: Time, from: NodeIdx, wake: u32, queue: &mut Queue) {
        if self.nodes[from.0].uplink.take_wake(wake) {
            self.settle(now, from, queue);
        }
    }

    /// Takes the `Sent` reports due, as `(sender, conn, frames)`, in the order they arose.
    pub fn take_reports(&mut self, mut report: impl FnMut(NodeIdx, ConnId, u32)) {
        for (node, conn, frames) in self.reports.drain(..) {
            report(node, conn, frames);
        }
    }

    /// Payload bytes of `Data` frames that left `node`'s uplink.
    pub fn data_bytes_up(&self, node: NodeIdx) -> u64 {
        self.nodes[node.0].data_bytes_up
    }

    /// Brings `node` and every node whose rates its changes affect up to `now`: frames that
    /// finished leave, rates are shared anew, the next wake-up is planned and `Sent` reports
    /// are collected. A change in a receiver's active senders, or in their rates, changes its
    /// downlink share, so its other senders whose rate that share bounds (or now bounds) are
    /// settled too, up to [`SHARE_FOLLOWS_PER_SETTLE_MAX`] receivers followed.
    fn settle(&mut self, now: Time, node: NodeIdx, queue: &mut Queue) {
        self.unsettled.push(node);
        let mut follows = SHARE_FOLLOWS_PER_SETTLE_MAX;
        while let Some(node) = self.unsettled.pop() {
            self.advance(now, node, queue);
            self.reshare(node, &mut follows);
            let (n, reports) = (&mut self.nodes[node.0], &mut self.reports);
            let at = n.uplink.next_departure();
            if let (Some(at), Some(wake)) = (at, n.uplink.plan_wake(at)) {
                queue.push(at, Item::UplinkDone { node, transmission: wake });
            }
            n.uplink.take_reports(|conn, frames| add_report(reports, (node, conn, frames)));
        }
    }

    /// Shares `node`'s uplink anew; each receiver with a limited downlink whose flow from it
    /// moved by more than [`SHARE_SLACK`] has its share computed again, while `follows` lasts.
    fn reshare(&mut self, node: NodeIdx, follows: &mut usize) {
        let capacity = self.nodes[node.0].link.up_bytes_per_s.map_or(f64::INFINITY, |rate| rate as f64);
        let uplink = &mut self.nodes[node.0].uplink;
        if *follows == 0 || !uplink.is_stale() || uplink.active_flows() > FAIR_SHARE_FLOWS_MAX {
            uplink.reshare(capacity);
            return;
        }
        let (mut rates, mut moved) = (std::mem::take(&mut self.rates), std::mem::take(&mut self.moved));
        let beyond_slack = |was: f64, is: f64| (is - was).abs() > is.max(was) * SHARE_SLACK;
        // Under equal shares every flow has the one rate: the flows are read only when
        // they have rates of their own, or when that one rate moved.
        let was_equal = uplink.equal_rate();
        if was_equal.is_none() {
            uplink.rates(&mut rates);
        }
        let before = rates.len();
        uplink.reshare(capacity);
        let none_moved = matches!((was_equal, uplink.equal_rate()), (Some(was), Some(is)) if !beyond_slack(was, is));
        if !none_moved {
            uplink.rates(&mut rates);
            let (old, new) = rates.split_at(before);
            for (at, &(to, is)) in new.iter().enumerate() {
                let was = was_equal.unwrap_or_else(|| old[at].1);
                if beyond_slack(was, is) && self.nodes[to.0].downlink_may_fill(None) {
                    moved.push(to);
                }
            }
        }
        moved.sort_unstable();
        moved.dedup();
        for to in moved.drain(..) {
            if *follows == 0 {
                break;
            }
            *follows -= 1;
            self.apply_share(to, None);
        }
        rates.clear();
        (self.rates, self.moved) = (rates, moved);
    }

    /// Counts `node`'s uplink progress up to `now`; frames that finished leave.
    fn advance(&mut self, now: Time, node: NodeIdx, queue: &mut Queue) {
        let (mut departed, mut changes) = (std::mem::take(&mut self.departed), std::mem::take(&mut self.changes));
        self.nodes[node.0].uplink.advance(now, &mut departed, &mut changes);
        for change in &changes {
            if let Change::Idle(flow, _) = change {
                self.untold.push((node, *flow));
            }
        }
        for (flow, frame) in departed.drain(..) {
            self.depart(now, node, flow, frame, queue);
        }
        for change in changes.drain(..) {
            match change {
                Change::Idle(flow, to) => self.idle_told(node, flow, to),
                Change::Finished(flow) => self.fin(now, flow, queue),
            }
        }
        (self.departed, self.changes) = (departed, changes);
    }

    /// `from`'s `flow` into `to`, listed in `untold`, went idle: `to` is told.
    fn idle_told(&mut self, from: NodeIdx, flow: Flow, to: NodeIdx) {
        if let Some(at) = self.untold.iter().position(|untold| *untold == (from, flow)) {
            self.untold.swap_remove(at);
        }
        self.inbound_changed(from, flow, to, false);
    }

    /// `from`'s `flow` into `to` became active or idle: `to`'s downlink share changes, and its
    /// other senders whose flow that share bounds, or now bounds, must be settled.
    ///
    /// A receiver with many short inbound flows (a tracker) would re-settle every sender on every
    /// change, so its share is applied to the others only once it moved by more than
    /// [`SHARE_SLACK`] since it was last applied, and only to senders whose rate is off by more
    /// than that: a sender's rate stays within twice the slack of its cap until its own next
    /// event (which reads the current share).
    fn inbound_changed(&mut self, from: NodeIdx, flow: Flow, to: NodeIdx, active: bool) {
        let Some(down) = self.nodes[to.0].link.down_bytes_per_s else {
            return;
        };
        let up = self.nodes[from.0].link.up_bytes_per_s;
        let receiver = &mut self.nodes[to.0];
        if active {
            if receiver.inbound.insert((from, flow)) {
                receiver.inbound_up.add(up, down);
            }
        } else if receiver.inbound.remove(&(from, flow)) {
            receiver.inbound_up.remove(up, down);
        }
        self.apply_share(to, Some(from));
    }

    /// Computes `to`'s downlink share again and, when it moved by more than [`SHARE_SLACK`]
    /// since it was last applied, caps its senders' flows at it (times each flow's weight);
    /// those whose rate is then off are settled, but for `from`, which the caller settles.
    fn apply_share(&mut self, to: NodeIdx, from: Option<NodeIdx>) {
        let share = self.downlink_share(to, None);
        let receiver = &mut self.nodes[to.0];
        // A downlink its senders could not fill before and cannot now tells none of them:
        // an infinite cap never binds. (The slack test does not see it: infinity less itself
        // is not a number.)
        let unfillable = share == f64::INFINITY && receiver.share_applied == f64::INFINITY;
        if unfillable || (share - receiver.share_applied).abs() <= share.min(receiver.share_applied) * SHARE_SLACK {
            return;
        }
        let applied = std::mem::replace(&mut receiver.share_applied, share);
        let down = receiver.link.down_bytes_per_s.unwrap_or(u64::MAX);
        let mut senders = std::mem::take(&mut self.senders);
        senders.extend(receiver.inbound.iter().copied());
        for (sender, other) in senders.drain(..) {
            let up = self.nodes[sender.0].link.up_bytes_per_s;
            let weight = flow_weight(up, down);
            let (cap, applied) = (share * weight, applied * weight);
            // A cap at or above the sender's whole rate never binds: when both the cap it holds
            // (within the slack of the last share applied) and the new one are, it is not told.
            let up = up.map_or(f64::INFINITY, |rate| rate as f64);
            if cap >= up && applied * (1.0 - SHARE_SLACK) >= up {
                continue;
            }
            let off = self.nodes[sender.0].uplink.set_cap(other, cap).is_some_and(|(rate, capped)| {
                rate > cap * (1.0 + SHARE_SLACK) || (capped && rate < cap * (1.0 - SHARE_SLACK))
            });
            if off && Some(sender) != from && !self.unsettled.contains(&sender) {
                self.unsettled.push(sender);
            }
        }
        self.senders = senders;
    }

    /// `to`'s downlink share per unit of weight: each of its active inbound flows may take it
    /// times the flow's weight ([`UNQUEUED_SENDER_WEIGHT`]). With a flow from `joining` about to
    /// start (counted as taking its share), that flow's share. Weighted max-min fair: flows
    /// their senders hold below their share keep their rates and the rest split what those
    /// leave by weight. Infinite for a downlink its senders cannot fill; split by weight alone
    /// past [`FAIR_SHARE_FLOWS_MAX`] flows.
    fn downlink_share(&mut self, to: NodeIdx, joining: Option<NodeIdx>) -> f64 {
        let node = &self.nodes[to.0];
        let Some(down) = node.link.down_bytes_per_s else { return f64::INFINITY };
        let joining_up = joining.map(|sender| self.nodes[sender.0].link.up_bytes_per_s);
        if !node.downlink_may_fill(joining_up) {
            return f64::INFINITY;
        }
        // The joining flow's share, or the share per unit of weight.
        let scale = joining_up.map_or(1.0, |up| flow_weight(up, down));
        let total = node.inbound_up.weight(node.inbound.len()) + joining_up.map_or(0.0, |_| scale);
        let mut level = down as f64 / total.max(1.0);
        if node.inbound.len() > FAIR_SHARE_FLOWS_MAX {
            return level * scale;
        }
        // The flows their senders could hold below a share, with their rates and weights, read
        // once from the senders' uplinks (cold) for every pass below.
        let mut holdable = std::mem::take(&mut self.holdable);
        holdable.clear();
        for &(sender, flow) in node.inbound.iter() {
            if self.untold.contains(&(sender, flow)) {
                continue;
            }
            let sender = &self.nodes[sender.0];
            if let Some((rate, false)) = sender.uplink.active_rate(flow).filter(|(rate, _)| *rate > 0.0) {
                holdable.push((rate, flow_weight(sender.link.up_bytes_per_s, down)));
            }
        }
        // Water-filling: each pass holds the flows below their share at their rates and splits
        // the rest anew; the level only rises, so the held flows only grow, in at most one
        // pass per flow.
        let share = loop {
            let (mut held_bytes_per_s, mut held) = (0.0, 0.0);
            for &(rate, weight) in &holdable {
                if rate < level * weight {
                    held_bytes_per_s += rate;
                    held += weight;
                }
            }
            if held == 0.0 || held >= total {
                break level * scale;
            }
            let next = (down as f64 - held_bytes_per_s) / (total - held);
            if next <= level {
                break level * scale;
            }
            level = next;
        };
        self.holdable = holdable;
        share
    }

    /// `from`'s `flow` stops: what it queued is dropped (its link is gone).
    fn drop_flow(&mut self, now: Time, from: NodeIdx, flow: Flow, queue: &mut Queue) {
        if !self.nodes[from.0].uplink.has_pending(flow) {
            return;
        }
        self.advance(now, from, queue);
        if let Some(to) = self.nodes[from.0].uplink.remove(flow) {
            self.inbound_changed(from, flow, to, false);
        }
        self.settle(now, from, queue);
    }

    /// A frame left `from`'s uplink at `now`.
    fn depart(&mut self, now: Time, from: NodeIdx, flow: Flow, frame: Frame, queue: &mut Queue) {
        let node = &mut self.nodes[from.0];
        if let Message::Data { bytes, .. } = &frame.message {
            node.data_bytes_up += bytes.len() as u64;
            node.data_left_at = Some(now);
        }
        // The standing queue drains at the link's rate once bulk data stops leaving.
        let standing =
            node.data_left_at.map_or(Duration::ZERO, |at| node.link.queue.saturating_sub(now.saturating_since(at)));
        self.arrive_later(now + standing, from, flow, frame, queue);
    }

    /// A frame that left `from`'s uplink (and its standing queue) at `now` reaches the other
    /// end after the link's latency and jitter (plus any retransmissions) and every earlier
    /// frame of its flow.
    fn arrive_later(&mut self, now: Time, from: NodeIdx, flow: Flow, frame: Frame, queue: &mut Queue) {
        let Some(link) = self.link(flow.0).filter(|l| l.ends[flow.1].open) else {
            return;
        };
        let to = link.ends[flow.1].node;
        let delay = self.latency(from, to) + self.jitter(from, to) + frame.retransmit_delay;
        // Looked up (and found alive) at the top of this function; nothing removed it since.
        let link = self.link_mut(flow.0).expect("checked alive above");
        let arrival = (now + delay).max(link.last_arrival[flow.1]);
        link.last_arrival[flow.1] = arrival;
        let input = Input::Message { conn: link.ends[flow.1].conn, message: frame.message };
        queue.push(arrival, Item::Wire { link: flow.0, end: flow.1, input });
    }

    /// The sender of `flow` closed it and everything it sent before has left: the receiving
    /// end hears `Disconnected` after the last of it.
    fn fin(&mut self, now: Time, (id, end): Flow, queue: &mut Queue) {
        let Some(link) = self.link(id) else {
            return;
        };
        let latency = self.latency(link.ends[0].node, link.ends[1].node);
        let at = (now + latency).max(link.last_arrival[end]);
        let conn = link.ends[end].conn;
        queue.push(at, Item::Wire { link: id, end, input: Input::Disconnected { conn } });
    }

    /// The link of `from`'s `conn` and the index of its other end.
    fn other_end(&self, from: NodeIdx, conn: ConnId) -> Option<(LinkId, usize)> {
        let id = *self.by_conn.get(&(from, conn))?;
        let link = self.link(id)?;
        Some((id, usize::from(link.ends[0].node == from && link.ends[0].conn == conn)))
    }

    /// `from` closes `conn`: what it sent still arrives, then the other end sees
    /// `Disconnected`. The closer hears nothing more on it.
    pub fn close(&mut self, now: Time, from: NodeIdx, conn: ConnId, queue: &mut Queue) {
        let Some((id, other)) = self.other_end(from, conn) else {
            return;
        };
        self.by_conn.remove(&(from, conn));
        // `other_end` found the link in `links` just above.
        let link = self.link_mut(id).expect("other_end only names live links");
        link.ends[1 - other].open = false;
        if !link.ends[other].open {
            self.forget(now, id, queue);
            return;
        }
        if !self.nodes[from.0].uplink.close((id, other)) {
            self.fin(now, (id, other), queue);
        }
    }

    /// Both ends of `id` closed: the link and whatever its flows still queued go.
    fn forget(&mut self, now: Time, id: LinkId, queue: &mut Queue) {
        if let Some(link) = self.links.get_mut(id as usize).and_then(Option::take) {
            self.drop_flows(now, id, &link, queue);
        }
    }

    /// Drops both directions' flows of `link` (number `id`) from their senders' uplinks.
    fn drop_flows(&mut self, now: Time, id: LinkId, link: &Link, queue: &mut Queue) {
        for to in 0..2 {
            self.drop_flow(now, link.ends[1 - to].node, (id, to), queue);
        }
    }

    /// An input arriving at `end` of `link` at `now`: the machine it is for, that machine's life
    /// and the node at the other end; `None` when that end closed (or reset) since it was sent.
    pub fn arrive(
        &mut self,
        now: Time,
        (link, end): (LinkId, usize),
        input: &Input,
        queue: &mut Queue,
    ) -> Option<(NodeIdx, u32, NodeIdx)> {
        let l = self.link_mut(link)?;
        let (e, other) = (l.ends[end], l.ends[1 - end].node);
        if !e.open {
            return None;
        }
        if matches!(input, Input::Disconnected { .. }) {
            l.ends[end].open = false;
            let both_closed = !l.ends[1 - end].open;
            self.by_conn.remove(&(e.node, e.conn));
            if both_closed {
                self.forget(now, link, queue);
            }
        }
        Some((e.node, e.incarnation, other))
    }

    /// Links currently open at `node`, as `(conn, remote node)`, in `ConnId` order.
    pub fn connections(&self, node: NodeIdx) -> Vec<(ConnId, NodeIdx)> {
        let mut open: Vec<(ConnId, NodeIdx)> = self
            .live_links()
            .flat_map(|(_, l)| {
                let open_here = |side: usize| l.ends[side].open && l.ends[side].node == node;
                (0..2).filter(move |side| open_here(*side)).map(move |side| (l.ends[side].conn, l.ends[1 - side].node))
            })
            .collect();
        open.sort_unstable();
        open
    }

    /// Resets a link: both open ends close now; each live one hears `Disconnected` after a
    /// latency (an opener also when its `Connected` had not arrived yet: it "could not open").
    fn reset(&mut self, now: Time, id: LinkId, queue: &mut Queue) {
        let Some(link) = self.links.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        self.drop_flows(now, id, &link, queue);
        let latency = self.latency(link.ends[0].node, link.ends[1].node);
        for (side, end) in link.ends.iter().enumerate() {
            if !end.open {
                continue;
            }
            self.by_conn.remove(&(end.node, end.conn));
            let alive = self.nodes[end.node.0].up && self.nodes[end.node.0].incarnation == end.incarnation;
            // The acceptor only knows of the link once its `Connected` arrived.
            let known = side == 0 || link.accepted_at <= now;
            if alive && known {
                let input = Input::Disconnected { conn: end.conn };
                queue.push(now + latency, Item::Local { node: end.node, incarnation: end.incarnation, input });
            }
        }
    }

    fn link(&self, id: LinkId) -> Option<&Link> {
        self.links.get(usize::try_from(id).ok()?)?.as_ref()
    }

    fn link_mut(&mut self, id: LinkId) -> Option<&mut Link> {
        self.links.get_mut(usize::try_from(id).ok()?)?.as_mut()
    }

    /// Open links in id order.
    fn live_links(&self) -> impl Iterator<Item = (LinkId, &Link)> {
        self.links.iter().enumerate().filter_map(|(id, l)| Some((id as LinkId, l.as_ref()?)))
    }

    fn latency(&self, a: NodeIdx, b: NodeIdx) -> Duration {
        self.nodes[a.0].link.latency.max(self.nodes[b.0].link.latency)
    }

    fn jitter(&mut self, a: NodeIdx, b: NodeIdx) -> Duration {
        let bound = self.nodes[a.0].link.jitter.max(self.nodes[b.0].link.jitter);
        let micros = u64::try_from(bound.as_micros()).unwrap_or(u64::MAX);
        if micros == 0 {
            return Duration::ZERO;
        }
        // `below` takes a usize; jitter bounds are far below usize::MAX microseconds.
        Duration::from_micros(self.rng.below(micros.min(usize::MAX as u64) as usize) as u64)
    }
}

/// Every node's open connections and their links (see `Network::by_conn`). A hash map, which
/// the workspace otherwise forbids for its random iteration order: this one is never iterated,
/// and its hasher's seed is fixed.
#[allow(clippy::disallowed_types)]
type ConnLinks = std::collections::HashMap<(NodeIdx, ConnId), LinkId, foldhash::fast::FixedState>;

/// Adds a `Sent` report, merged into the last one when it is for the same connection.
fn add_report(reports: &mut Vec<(NodeIdx, ConnId, u32)>, (node, conn, frames): (NodeIdx, ConnId, u32)) {
    match reports.last_mut() {
        Some((n, c, count)) if (*n, *c) == (node, conn) => *count += frames,
        _ => reports.push((node, conn, frames)),
    }
}

/// Bytes a frame of `size_bytes` occupies on a link: itself and the headers of the segments
/// that carry it. A frame written alone fills its own segments (a connection's frames share
/// one only when written together, a small effect left out).
pub fn link_bytes(size_bytes: u64) -> u64 {
    size_bytes + segments(size_bytes) * SEGMENT_HEADER_BYTES
}

/// The TCP segments that carry a frame of `size_bytes` written alone.
fn segments(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(SEGMENT_PAYLOAD_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::SEND_BUFFER_BYTES;

    /// The size of a frame that takes `link` bytes of the link with its headers (for the
    /// sizes these tests use).
    fn sized_for_link(link: u64) -> u64 {
        let size = link - link.div_ceil(SEGMENT_PAYLOAD_BYTES + SEGMENT_HEADER_BYTES) * SEGMENT_HEADER_BYTES;
        assert_eq!(link_bytes(size), link, "no frame takes exactly {link} bytes of the link");
        size
    }

    #[test]
    fn a_frame_takes_the_headers_of_its_segments_of_the_link() {
        assert_eq!(link_bytes(1), 1 + 66, "a segment of its own");
        assert_eq!(link_bytes(1448), 1514, "one full segment");
        assert_eq!(link_bytes(1449), 1449 + 2 * 66);
        let block = 256 * 1024;
        let payload_share = block as f64 / link_bytes(block) as f64;
        assert!((payload_share - 1448.0 / 1514.0).abs() < 1e-3, "bulk data carries 1448/1514: {payload_share}");
    }

    fn link(latency_ms: u64, rate: Option<u64>, loss: f64) -> LinkSpec {
        LinkSpec {
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::ZERO,
            up_bytes_per_s: rate,
            down_bytes_per_s: rate,
            queue: Duration::ZERO,
            loss,
        }
    }

    fn drain(net: &mut Network, queue: &mut Queue) -> Vec<(Time, String)> {
        std::iter::from_fn(|| loop {
            match queue.pop()? {
                (at, Item::UplinkDone { node, transmission }) => net.uplink_done(at, node, transmission, queue),
                other => return Some(other),
            }
        })
        .map(|(at, item)| {
            let text = match item {
                Item::Wire { end, input, .. } => format!("wire{end} {input:?}"),
                Item::Local { node, input, .. } => format!("local{} {input:?}", node.0),
                other => format!("{other:?}"),
            };
            (at, text)
        })
        .collect()
    }

    fn two_nodes(spec: LinkSpec) -> (Network, Queue) {
        let mut net = Network::new(1, vec![spec, spec]);
        net.node_up(NodeIdx(0));
        net.node_up(NodeIdx(1));
        (net, Queue::default())
    }

    #[test]
    fn addresses_map_back_to_their_nodes() {
        let peers_end = 100_001;
        for node in (0..peers_end).map(NodeIdx) {
            assert_eq!(node_of_addr(node_addr(node), peers_end), Some(node));
        }
        for number in 1..8 {
            assert_eq!(node_of_addr(tracker_addr(number), peers_end), Some(NodeIdx(peers_end + number - 1)));
        }
        for stranger in ["10.0.1.0:7000", "10.0.1.251:7000", "192.168.0.1:7000", "[::1]:7000"] {
            assert_eq!(node_of_addr(stranger.parse().expect("an address"), peers_end), None, "{stranger}");
        }
        let net = Network::with_trackers(1, vec![link(10, None, 0.0); 4], 2);
        assert_eq!(net.node_at(tracker_addr(1)), Some(NodeIdx(3)), "the second tracker follows the two peers");
        assert_eq!(net.node_at(tracker_addr(2)), None, "no third tracker");
        let third = node_addr(NodeIdx(2));
        assert_eq!(net.node_at(SocketAddr::new(third.ip(), 40_001)), Some(NodeIdx(2)));
        assert_eq!(net.listener_at(SocketAddr::new(third.ip(), 40_001)), None);
        assert_eq!(net.node_at(node_addr(NodeIdx(3))), None, "only two peers");
    }

    #[test]
    fn connect_reaches_acceptor_after_one_latency_and_opener_after_two() {
        let (mut net, mut q) = two_nodes(link(10, None, 0.0));
        net.connect(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), node_addr(NodeIdx(0)), &mut q);
        let events = drain(&mut net, &mut q);
        assert_eq!(events[0].0, Time::from_millis(10));
        assert!(events[0].1.starts_with("wire1 Connected { conn: Inbound(1)"), "{events:?}");
        assert_eq!(events[1].0, Time::from_millis(20));
        assert_eq!(net.connections(NodeIdx(0)), vec![(ConnId::Inbound(1), NodeIdx(1))]);
    }

    #[test]
    fn bandwidth_serialises_messages_on_the_uplink() {
        let (mut net, mut q) = two_nodes(link(10, Some(1000), 0.0));
        net.connect(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), node_addr(NodeIdx(0)), &mut q);
        let connected = drain(&mut net, &mut q).len();
        assert_eq!(connected, 2);
        let at = Time::from_millis(20);
        net.send(at, NodeIdx(1), ConnId::Outbound(1), (Message::List, sized_for_link(1000)), &mut q);
        net.send(at, NodeIdx(1), ConnId::Outbound(1), (Message::List, sized_for_link(1000)), &mut q);
        let arrivals: Vec<Time> = drain(&mut net, &mut q).into_iter().map(|(t, _)| t).collect();
        assert_eq!(arrivals, [Time::from_millis(1030), Time::from_millis(2030)]);
    }

    /// Nodes with `specs`, all up; node 0 connects to each other node `i` as `Outbound(i)`.
    fn star(specs: Vec<LinkSpec>) -> (Network, Queue) {
        let count = specs.len();
        let mut net = Network::new(1, specs);
        let mut q = Queue::default();
        for i in 0..count {
            net.node_up(NodeIdx(i));
        }
        for i in 1..count {
            net.connect(Time::ZERO, NodeIdx(0), ConnId::Outbound(i as u64), node_addr(NodeIdx(i)), &mut q);
        }
        drain(&mut net, &mut q);
        (net, q)
    }

    /// Node 0 sends one message of each size to node `i` (the `i`-th size to node `i + 1`) at
    /// `at`; returns when each arrives, by receiver.
    fn arrivals(net: &mut Network, q: &mut Queue, at: Time, sizes: &[u64]) -> Vec<(Time, String)> {
        for (i, size) in sizes.iter().enumerate() {
            let conn = ConnId::Outbound(i as u64 + 1);
            assert_eq!(net.send(at, NodeIdx(0), conn, (Message::List, *size), q), Sent::Queued);
        }
        drain(net, q)
    }

    #[test]
    fn two_flows_on_one_uplink_each_get_half_its_rate() {
        let (mut net, mut q) = star(vec![link(10, Some(1000), 0.0); 3]);
        let events = arrivals(&mut net, &mut q, Time::from_millis(20), &[sized_for_link(1000), sized_for_link(1000)]);
        let times: Vec<Time> = events.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, [Time::from_millis(2030), Time::from_millis(2030)], "{events:?}");
    }

    #[test]
    fn a_flow_bottlenecked_at_its_receiver_leaves_the_rest_of_the_uplink_to_the_other() {
        let narrow = LinkSpec { down_bytes_per_s: Some(200), ..link(10, None, 0.0) };
        let (mut net, mut q) = star(vec![link(10, Some(1000), 0.0), narrow, link(10, None, 0.0)]);
        let events = arrivals(&mut net, &mut q, Time::from_millis(20), &[sized_for_link(200), sized_for_link(800)]);
        let times: Vec<Time> = events.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, [Time::from_millis(1030), Time::from_millis(1030)], "200 B/s and 800 B/s: {events:?}");
    }

    #[test]
    fn a_message_on_a_new_connection_waits_only_for_its_fair_share_not_behind_a_busy_flow() {
        let (mut net, mut q) = star(vec![link(10, Some(1000), 0.0); 3]);
        let block = (Message::List, sized_for_link(10_000));
        assert_eq!(net.send(Time::from_millis(20), NodeIdx(0), ConnId::Outbound(1), block, &mut q), Sent::Queued);
        let hello = (Message::List, sized_for_link(100));
        assert_eq!(net.send(Time::from_millis(20), NodeIdx(0), ConnId::Outbound(2), hello, &mut q), Sent::Queued);
        let events = drain(&mut net, &mut q);
        assert!(events[0].1.starts_with("wire1"), "{events:?}");
        assert_eq!(events[0].0, Time::from_millis(20 + 200 + 10), "100 bytes at half of 1000 B/s, then the latency");
        assert_eq!(events[1].0, Time::from_millis(20 + 10_100 + 10), "the link never idles: 10,100 bytes in 10.1 s");
    }

    #[test]
    fn a_new_sender_into_a_narrow_downlink_slows_the_flow_already_there() {
        let narrow = LinkSpec { down_bytes_per_s: Some(1000), ..link(10, None, 0.0) };
        let mut net = Network::new(1, vec![narrow, link(10, None, 0.0), link(10, None, 0.0)]);
        let mut q = Queue::default();
        for node in 0..3 {
            net.node_up(NodeIdx(node));
            if node > 0 {
                net.connect(Time::ZERO, NodeIdx(node), ConnId::Outbound(1), node_addr(NodeIdx(0)), &mut q);
            }
        }
        drain(&mut net, &mut q);
        let conn = ConnId::Outbound(1);
        net.send(Time::from_millis(20), NodeIdx(1), conn, (Message::List, sized_for_link(2000)), &mut q);
        // Halfway through, a second sender shares the downlink: 500 B/s each until it is done.
        while q.peek_time().is_some_and(|t| t < Time::from_millis(1020)) {
            let (at, item) = q.pop().expect("peeked");
            if let Item::UplinkDone { node, transmission } = item {
                net.uplink_done(at, node, transmission, &mut q);
            }
        }
        net.send(Time::from_millis(1020), NodeIdx(2), conn, (Message::List, sized_for_link(500)), &mut q);
        let times: Vec<Time> = drain(&mut net, &mut q).into_iter().map(|(t, _)| t).collect();
        assert_eq!(times, [Time::from_millis(2030), Time::from_millis(2530)]);
    }

    /// Node 0 with `receiver`'s link; nodes 1.. with `senders`' links, each connected to node
    /// 0 as its `Outbound(1)`, and node `senders.len() + 1` with `other`'s link, to which node
    /// 1 is connected as its `Outbound(2)`.
    fn into_one(receiver: LinkSpec, senders: &[LinkSpec], other: LinkSpec) -> (Network, Queue) {
        let mut specs = vec![receiver];
        specs.extend_from_slice(senders);
        specs.push(other);
        let count = specs.len();
        let mut net = Network::new(1, specs);
        let mut q = Queue::default();
        for node in 0..count {
            net.node_up(NodeIdx(node));
        }
        for node in 1..count - 1 {
            net.connect(Time::ZERO, NodeIdx(node), ConnId::Outbound(1), node_addr(NodeIdx(0)), &mut q);
        }
        net.connect(Time::ZERO, NodeIdx(1), ConnId::Outbound(2), node_addr(NodeIdx(count - 1)), &mut q);
        drain(&mut net, &mut q);
        (net, q)
    }

    #[test]
    fn a_sender_held_below_its_share_of_a_narrow_downlink_leaves_the_rest_to_the_others() {
        let narrow = LinkSpec { down_bytes_per_s: Some(1000), ..link(10, None, 0.0) };
        let slow = link(10, Some(300), 0.0);
        let (mut net, mut q) = into_one(narrow, &[slow, link(10, None, 0.0)], link(10, None, 0.0));
        let at = Time::from_millis(20);
        net.send(at, NodeIdx(1), ConnId::Outbound(1), (Message::List, sized_for_link(3000)), &mut q);
        net.send(at, NodeIdx(2), ConnId::Outbound(1), (Message::List, sized_for_link(700)), &mut q);
        let times: Vec<Time> = drain(&mut net, &mut q).into_iter().map(|(t, _)| t).collect();
        // The slow sender takes 300 B/s of the downlink, the other the 700 B/s it leaves (not
        // half of it, 500 B/s).
        assert_eq!(times, [Time::from_millis(20 + 1000 + 10), Time::from_millis(20 + 10_000 + 10)]);
    }

    #[test]
    fn a_sender_whose_rate_rises_takes_its_share_back_from_the_others() {
        let narrow = LinkSpec { down_bytes_per_s: Some(1200), ..link(10, None, 0.0) };
        let senders = [link(10, Some(1000), 0.0), link(10, Some(1200), 0.0)];
        let (mut net, mut q) = into_one(narrow, &senders, link(10, None, 0.0));
        let at = Time::from_millis(20);
        // Node 1 splits its 1000 B/s between node 0 and node 3 for a second, so node 2 gets the
        // 700 B/s of node 0's downlink that node 1 leaves; then node 1's flow to node 0 rises
        // and the two share the downlink, 600 B/s each: node 2's 1300 bytes take 2 s.
        net.send(at, NodeIdx(1), ConnId::Outbound(2), (Message::List, sized_for_link(500)), &mut q);
        net.send(at, NodeIdx(1), ConnId::Outbound(1), (Message::List, sized_for_link(5000)), &mut q);
        net.send(at, NodeIdx(2), ConnId::Outbound(1), (Message::List, sized_for_link(1300)), &mut q);
        let times: Vec<Time> = drain(&mut net, &mut q).into_iter().map(|(t, _)| t).collect();
        // Node 3's 500 bytes; node 2's; node 1's 5000 bytes, 500 + 600 of them by 2,020 ms and
        // the rest at 1000 B/s once node 2 is done.
        assert_eq!(times, [Time::from_millis(1030), Time::from_millis(2030), Time::from_millis(5930)]);
    }

    #[test]
    fn a_sender_faster_than_the_downlink_takes_a_double_share_of_it() {
        let narrow = LinkSpec { down_bytes_per_s: Some(1200), ..link(10, None, 0.0) };
        let (mut net, mut q) = into_one(narrow, &[link(10, Some(1000), 0.0), link(10, None, 0.0)], link(10, None, 0.0));
        let at = Time::from_millis(20);
        net.send(at, NodeIdx(1), ConnId::Outbound(1), (Message::List, sized_for_link(400)), &mut q);
        net.send(at, NodeIdx(2), ConnId::Outbound(1), (Message::List, sized_for_link(2000)), &mut q);
        let times: Vec<Time> = drain(&mut net, &mut q).into_iter().map(|(t, _)| t).collect();
        // 400 B/s for the sender slower than the downlink, 800 B/s for the unlimited one; then
        // the whole 1200 B/s for its last 1200 bytes.
        assert_eq!(times, [Time::from_millis(20 + 1000 + 10), Time::from_millis(20 + 2000 + 10)]);
    }

    fn data(chunk: u32) -> Message {
        let file_id = p2p_core::FileId(p2p_core::Digest([1; 32]));
        Message::Data { file_id, chunk: p2p_core::ChunkIndex(chunk), offset: 0, bytes: bytes::Bytes::new() }
    }

    #[test]
    fn frames_leaving_an_uplink_that_sends_data_wait_out_its_standing_queue_until_it_drains() {
        let queued = LinkSpec { queue: Duration::from_millis(100), ..link(10, Some(10_000), 0.0) };
        let (mut net, mut q) = star(vec![queued, link(10, None, 0.0), link(10, None, 0.0)]);
        let mut arrivals = Vec::new();
        let mut run_until = |net: &mut Network, q: &mut Queue, until: u64| {
            while q.peek_time().is_some_and(|t| t < Time::from_millis(until)) {
                match q.pop().expect("peeked") {
                    (at, Item::UplinkDone { node, transmission }) => net.uplink_done(at, node, transmission, q),
                    (at, Item::Wire { input: Input::Message { message, .. }, .. }) => {
                        arrivals.push((at, message.kind()))
                    }
                    _ => {}
                }
            }
        };
        // The block takes the link from 20 ms to 1,020 ms, then waits out the whole queue.
        net.send(Time::from_millis(20), NodeIdx(0), ConnId::Outbound(1), (data(0), sized_for_link(10_000)), &mut q);
        run_until(&mut net, &mut q, 1040);
        // A list leaves at 1,050 ms, behind what is left of the queue 30 ms after the block
        // left; another at 2,010 ms, when the queue drained long ago.
        for (at, until) in [(1040, 2000), (2000, 3000)] {
            let list = (Message::List, sized_for_link(100));
            net.send(Time::from_millis(at), NodeIdx(0), ConnId::Outbound(2), list, &mut q);
            run_until(&mut net, &mut q, until);
        }
        let expected = [(1020 + 100 + 10, "data"), (1050 + 70 + 10, "list"), (2010 + 10, "list")];
        assert_eq!(arrivals, expected.map(|(ms, kind)| (Time::from_millis(ms), kind)));
    }

    #[test]
    fn data_frames_are_reported_sent_once_each_as_they_leave_and_control_frames_pass_waiting_data() {
        let (mut net, mut q) = star(vec![link(10, Some(64 * 1024), 0.0); 2]);
        let conn = ConnId::Outbound(1);
        // Four fit in the send buffer, and each takes a second of the link.
        let frame_bytes = sized_for_link(64 * 1024);
        assert!(4 * frame_bytes <= SEND_BUFFER_BYTES && 5 * frame_bytes > SEND_BUFFER_BYTES);
        let start = Time::from_millis(20);
        for piece in 0..6 {
            net.send(start, NodeIdx(0), conn, (data(piece), frame_bytes), &mut q);
        }
        net.send(start, NodeIdx(0), conn, (Message::List, 1), &mut q);
        let mut reported = Vec::new();
        net.take_reports(|_, _, frames| reported.push((start, frames)));
        assert!(reported.is_empty(), "frames in the send buffer have not left");
        let mut arrivals = Vec::new();
        while let Some((at, item)) = q.pop() {
            match item {
                Item::UplinkDone { node, transmission } => {
                    net.uplink_done(at, node, transmission, &mut q);
                    net.take_reports(|_, _, frames| reported.push((at, frames)));
                }
                Item::Wire { input: Input::Message { message, .. }, .. } => arrivals.push(message.kind()),
                _ => {}
            }
        }
        assert_eq!(reported.iter().map(|r| r.1).sum::<u32>(), 6, "each data frame once, the list not");
        assert_eq!(reported[0], (start + Duration::from_secs(1), 1), "when the first left");
        let list_us = (link_bytes(1) * 1_000_000).div_ceil(64 * 1024);
        assert_eq!(reported.last().map(|r| r.0), Some(start + Duration::from_micros(6_000_000 + list_us)));
        let list_at = arrivals.iter().position(|kind| *kind == "list");
        assert_eq!(list_at, Some(4), "behind the four frames in the buffer, ahead of the two waiting");
    }

    #[test]
    fn partition_resets_links_and_refuses_new_ones_until_healed() {
        let (mut net, mut q) = two_nodes(link(10, None, 0.0));
        net.connect(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), node_addr(NodeIdx(0)), &mut q);
        drain(&mut net, &mut q);
        // A message still in flight to the acceptor must not hide the link from it.
        net.send(Time::from_millis(95), NodeIdx(1), ConnId::Outbound(1), (Message::List, 10), &mut q);
        net.partition(Time::from_millis(100), &[NodeIdx(1)], &mut q);
        let notices = drain(&mut net, &mut q);
        let resets = notices.iter().filter(|(_, text)| text.contains("Disconnected")).count();
        assert_eq!(resets, 2, "both ends hear of the reset: {notices:?}");
        net.connect(Time::from_millis(200), NodeIdx(1), ConnId::Outbound(2), node_addr(NodeIdx(0)), &mut q);
        assert!(drain(&mut net, &mut q)[0].1.contains("Disconnected"));
        net.heal();
        net.connect(Time::from_millis(300), NodeIdx(1), ConnId::Outbound(3), node_addr(NodeIdx(0)), &mut q);
        assert!(drain(&mut net, &mut q)[0].1.contains("Connected"));
    }

    #[test]
    fn a_lost_message_resets_the_connection() {
        let (mut net, mut q) = two_nodes(link(10, None, 0.99));
        net.connect(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), node_addr(NodeIdx(0)), &mut q);
        drain(&mut net, &mut q);
        let (list, later) = (|| (Message::List, 10), Time::from_millis(50));
        assert_eq!(net.send(later, NodeIdx(1), ConnId::Outbound(1), list(), &mut q), Sent::Lost);
        assert_eq!(net.send(later, NodeIdx(1), ConnId::Outbound(1), list(), &mut q), Sent::NoLink);
        assert_eq!(drain(&mut net, &mut q).len(), 2);
    }

    /// How much later than one latency (10 ms) each of `sends` frames of `size` bytes arrives
    /// over a link losing 30 % at both ends, each on a connection of its own, seconds apart (no
    /// frame waits behind another); `None` where the connection reset.
    fn retransmission_delays(sends: u64, size: u64) -> Vec<Option<Duration>> {
        let (mut net, mut q) = two_nodes(link(10, None, 0.3));
        (0..sends)
            .map(|n| {
                let (conn, at) = (ConnId::Outbound(n), Time::from_millis(n * 10_000));
                net.connect(at, NodeIdx(1), conn, node_addr(NodeIdx(0)), &mut q);
                drain(&mut net, &mut q);
                let sent = at + Duration::from_millis(100);
                match net.send(sent, NodeIdx(1), conn, (Message::List, size), &mut q) {
                    Sent::Queued => drain(&mut net, &mut q)
                        .iter()
                        .find(|(_, e)| e.contains("Message"))
                        .map(|(t, _)| t.saturating_since(sent + Duration::from_millis(10))),
                    _ => None,
                }
            })
            .collect()
    }

    #[test]
    fn a_message_is_lost_with_the_larger_loss_of_its_two_ends_not_both() {
        let delays = retransmission_delays(400, 10);
        let delayed = delays.iter().filter(|d| **d != Some(Duration::ZERO)).count();
        // 30 % of the sends; both ends' losses compounded would be 51 %.
        let share = delayed as f64 / delays.len() as f64;
        assert!((0.22..0.38).contains(&share), "{delayed} of {} sends lost at least once", delays.len());
    }

    #[test]
    fn a_lost_frame_of_many_segments_comes_a_round_trip_later_and_a_short_one_after_a_timeout() {
        let ms = Duration::from_millis;
        let bulk = retransmission_delays(200, FAST_RETRANSMIT_SEGMENTS_MIN * SEGMENT_PAYLOAD_BYTES);
        assert!(bulk.contains(&Some(ms(20))), "some frame lost once: {bulk:?}");
        for delay in bulk.iter().flatten() {
            assert!([0, 20, 40, 60].map(ms).contains(delay), "a round trip (20 ms) per loss: {delay:?}");
        }
        let short = retransmission_delays(200, SEGMENT_PAYLOAD_BYTES);
        assert!(short.contains(&Some(ms(200))), "some frame lost once: {short:?}");
        for delay in short.iter().flatten() {
            assert!([0, 200, 600, 1400].map(ms).contains(delay), "a timeout doubling per loss: {delay:?}");
        }
    }

    #[test]
    fn close_flushes_then_tells_the_other_end() {
        let (mut net, mut q) = two_nodes(link(10, Some(1000), 0.0));
        net.connect(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), node_addr(NodeIdx(0)), &mut q);
        drain(&mut net, &mut q);
        net.send(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), (Message::List, sized_for_link(1000)), &mut q);
        net.close(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), &mut q);
        let events = drain(&mut net, &mut q);
        assert_eq!(events[0].0, Time::from_millis(1010));
        assert_eq!(events[1].0, Time::from_millis(1010), "the close waits for the data: {events:?}");
        assert!(events[0].1.contains("Message"));
        assert!(events[1].1.contains("Disconnected"));
    }
}
