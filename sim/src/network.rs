//! The virtual network: addresses, links, latency with jitter, bandwidth, loss and partitions,
//! all from one seeded RNG.
//!
//! The network owns every connection's state and decides *when* each input reaches a machine;
//! it pushes those inputs onto the central [`Queue`] and never calls a machine itself.
//!
//! Model, per message of N bytes from `a` to `b`:
//! - it occupies `a`'s uplink for N / up-rate, after whatever `a` queued before it (its arrival
//!   is scheduled when its transmission starts);
//! - its first byte reaches `b` one link latency (the larger of the two nodes' latencies) plus a
//!   random jitter after it starts; it then occupies `b`'s downlink for N / down-rate;
//! - it arrives when both transfers are done, and never before an earlier message of the same
//!   link direction (a link is an ordered stream, like TCP);
//! - with the link's loss probability it is lost; a TCP stream never silently loses data, so a
//!   lost message is sent again after a retransmission timeout that doubles on each further
//!   loss (and holds back everything behind it on that connection), and after
//!   [`LOSSES_BEFORE_RESET_COUNT`] losses in a row the connection resets: both ends see
//!   `Disconnected`.
//!
//! A partition puts nodes into groups: links between groups are reset, and connecting across
//! groups fails (as does connecting to a node that is down). Invariant: every link in `links`
//! has each end in its node's `by_conn` exactly while that end is open.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use p2p_core::rng::Rng;
use p2p_core::small::VecMap;
use p2p_core::wire::Message;
use p2p_core::{ConnId, Input, Time};

use crate::queue::{Item, LinkId, Queue};
use crate::scenario::{LinkSpec, NodeIdx};
use crate::uplink::{Flow, Queued, Uplink};

/// The port every simulated node listens on (addresses are labels; no socket is opened).
pub const LISTEN_PORT: u16 = 7000;
/// Consecutive losses of one message after which a connection resets (TCP giving up).
pub const LOSSES_BEFORE_RESET_COUNT: u32 = 4;
/// Shortest retransmission timeout (doubling per further loss); at least two latencies.
const RETRANSMIT_TIMEOUT_MIN: Duration = Duration::from_millis(200);

/// First source port the network gives the accepting side as the opener's address.
const EPHEMERAL_PORT_FIRST: u16 = 40_000;
const EPHEMERAL_PORT_COUNT: u64 = 20_000;

/// What became of a message handed to [`Network::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// It is on its way (queued on the sender's uplink, or already scheduled to arrive).
    Queued,
    /// It was lost too often and the connection reset.
    Lost,
    /// The connection was already gone; the message is dropped, as a closed socket would.
    NoLink,
}

#[derive(Debug)]
struct NetNode {
    addr: SocketAddr,
    link: LinkSpec,
    up: bool,
    accepting: bool,
    incarnation: u32,
    group: u32,
    uplink: Uplink,
    downlink_free: Time,
    inbound_next: u64,
    /// The node's open connections and their links.
    by_conn: VecMap<ConnId, LinkId>,
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
    /// Links by id (ids count up from 0; a closed link's slot stays empty).
    links: Vec<Option<Link>>,
}

/// The address of node `node`: the tracker is 10.0.0.1, peers count up from 10.0.1.1.
pub fn node_addr(node: NodeIdx) -> SocketAddr {
    let ip = if node == NodeIdx::TRACKER {
        Ipv4Addr::new(10, 0, 0, 1)
    } else {
        let i = node.0 - 1;
        // Scenarios have at most 100,000 peers, so this stays inside 10.0.0.0/8.
        let host = ((1 + i / 250) << 8) | (1 + i % 250);
        Ipv4Addr::from(0x0A00_0000 | host as u32)
    };
    SocketAddr::V4(SocketAddrV4::new(ip, LISTEN_PORT))
}

/// The node whose [`node_addr`] has `addr`'s host, if the host is one `node_addr` gives; the
/// inverse is arithmetic, so naming a node in a trace line costs no lookup.
fn node_of_addr(addr: SocketAddr) -> Option<NodeIdx> {
    let SocketAddr::V4(v4) = addr else { return None };
    let ip = u32::from(*v4.ip());
    if ip >> 24 != 0x0A {
        return None;
    }
    let (high, low) = ((ip >> 8) & 0xFFFF, ip & 0xFF);
    match (high, low) {
        (0, 1) => Some(NodeIdx::TRACKER),
        (1.., 1..=250) => Some(NodeIdx(((high - 1) * 250 + low) as usize)),
        _ => None,
    }
}

impl Network {
    /// A network of `links.len()` nodes, all down, node `i` with link `links[i]`.
    pub fn new(seed: u64, links: Vec<LinkSpec>) -> Network {
        let nodes: Vec<NetNode> = links
            .into_iter()
            .enumerate()
            .map(|(i, link)| NetNode {
                addr: node_addr(NodeIdx(i)),
                link,
                up: false,
                accepting: false,
                incarnation: 0,
                group: 0,
                uplink: Uplink::default(),
                downlink_free: Time::ZERO,
                inbound_next: 0,
                by_conn: VecMap::new(),
            })
            .collect();
        Network { rng: Rng::from_seed(Rng::derive_seed(seed, "network")), nodes, links: Vec::new() }
    }

    /// The node at `addr`'s host (whatever the port), if any.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeIdx> {
        node_of_addr(addr).filter(|node| node.0 < self.nodes.len())
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
        self.nodes[node.0].uplink.clear();
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
    /// `Disconnected` when nobody reachable listens there.
    pub fn connect(&mut self, now: Time, from: NodeIdx, conn: ConnId, addr: SocketAddr, queue: &mut Queue) {
        let target = self.listener_at(addr);
        let reachable = target.filter(|t| {
            let t = &self.nodes[t.0];
            t.up && t.accepting && t.group == self.nodes[from.0].group
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
        let end = |node: NodeIdx, conn| End { node, conn, incarnation: self.nodes[node.0].incarnation, open: true };
        let ends = [end(from, conn), end(target, inbound)];
        let (accepted, opened) = (now + latency, now + latency * 2);
        self.links.push(Some(Link { ends, last_arrival: [opened, accepted], accepted_at: accepted }));
        self.nodes[from.0].by_conn.insert(conn, id);
        self.nodes[target.0].by_conn.insert(inbound, id);
        queue.push(
            accepted,
            Item::Wire { link: id, end: 1, input: Input::Connected { conn: inbound, remote: opener_addr } },
        );
        queue.push(opened, Item::Wire { link: id, end: 0, input: Input::Connected { conn, remote: addr } });
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
        let Some(&id) = self.nodes[from.0].by_conn.get(&conn) else {
            return Sent::NoLink;
        };
        let Some(link) = self.link(id) else {
            return Sent::NoLink;
        };
        let side = usize::from(link.ends[0].node != from || link.ends[0].conn != conn);
        let to = link.ends[1 - side].node;
        let loss = 1.0 - (1.0 - self.nodes[from.0].link.loss) * (1.0 - self.nodes[to.0].link.loss);
        let mut losses = 0;
        while loss > 0.0 && self.rng.chance(loss) {
            losses += 1;
            if losses == LOSSES_BEFORE_RESET_COUNT {
                self.reset(now, id, queue);
                return Sent::Lost;
            }
        }
        let timeout = RETRANSMIT_TIMEOUT_MIN.max(self.latency(from, to) * 2);
        let retransmit_delay = timeout * ((1u32 << losses) - 1);
        let flow = (id, 1 - side);
        if self.nodes[from.0].link.up_bytes_per_s.is_none() {
            self.report_sent(now, from, conn, queue);
            self.arrive_later(now, from, flow, (message, size_bytes, retransmit_delay), queue);
        } else {
            self.nodes[from.0].uplink.push(flow, Queued::Message(message, size_bytes, retransmit_delay));
            self.kick_uplink(now, from, queue);
        }
        Sent::Queued
    }

    /// Something was queued on `from`'s uplink: it starts now if the uplink is idle, else a
    /// wake-up is due when the current transmission ends (unless one already is).
    fn kick_uplink(&mut self, now: Time, from: NodeIdx, queue: &mut Queue) {
        let uplink = &mut self.nodes[from.0].uplink;
        if uplink.is_waking() {
            return;
        }
        match uplink.busy_until(now) {
            Some(until) => {
                let wake = uplink.plan_wake();
                queue.push(until, Item::UplinkDone { node: from, transmission: wake });
            }
            None => self.start_uplink(now, from, queue),
        }
    }

    /// `from`'s uplink finished the transmission that wake-up `wake` was planned for: the next
    /// one starts.
    pub fn uplink_done(&mut self, now: Time, from: NodeIdx, wake: u64, queue: &mut Queue) {
        if self.nodes[from.0].uplink.take_wake(wake) {
            self.start_uplink(now, from, queue);
        }
    }

    /// Starts the next transmission on `from`'s uplink (idle at `now`), skipping what belongs to
    /// dead links: its arrival is scheduled, and a wake-up for its end if more waits behind it.
    fn start_uplink(&mut self, now: Time, from: NodeIdx, queue: &mut Queue) {
        while let Some((flow, item)) = self.nodes[from.0].uplink.take_next() {
            if !self.link(flow.0).is_some_and(|l| l.ends[flow.1].open) {
                continue;
            }
            match item {
                Queued::Fin => self.fin(now, flow, queue),
                Queued::Message(message, size_bytes, retransmit_delay) => {
                    if let Some(conn) = self.link(flow.0).map(|l| l.ends[1 - flow.1].conn) {
                        self.report_sent(now, from, conn, queue);
                    }
                    let done = now + transfer(size_bytes, self.nodes[from.0].link.up_bytes_per_s);
                    self.nodes[from.0].uplink.start(flow, done);
                    self.arrive_later(done, from, flow, (message, size_bytes, retransmit_delay), queue);
                    if self.nodes[from.0].uplink.has_queued() {
                        self.kick_uplink(now, from, queue);
                    }
                    return;
                }
            }
        }
    }

    /// A frame of `from`'s `conn` starts its transmission at `now`: the peer hears `Sent` (the
    /// tracker does not use it, so it is not told).
    fn report_sent(&self, now: Time, from: NodeIdx, conn: ConnId, queue: &mut Queue) {
        if from != NodeIdx::TRACKER {
            let incarnation = self.nodes[from.0].incarnation;
            queue.push(now, Item::Local { node: from, incarnation, input: Input::Sent { conn, frames: 1 } });
        }
    }

    /// A message that left `from`'s uplink at `now` reaches the other end after the link's
    /// latency and jitter (plus any retransmissions), the receiver's downlink, and every
    /// earlier message of its flow.
    fn arrive_later(
        &mut self,
        now: Time,
        from: NodeIdx,
        flow: Flow,
        (message, size_bytes, retransmit_delay): (Message, u64, Duration),
        queue: &mut Queue,
    ) {
        let Some(link) = self.link(flow.0).filter(|l| l.ends[flow.1].open) else {
            return;
        };
        let to = link.ends[flow.1].node;
        let delay = self.latency(from, to) + self.jitter(from, to) + retransmit_delay;
        let down = &mut self.nodes[to.0];
        let down_done = (now + delay).max(down.downlink_free + transfer(size_bytes, down.link.down_bytes_per_s));
        down.downlink_free = down_done;
        // Looked up (and found alive) at the top of this function; nothing removed it since.
        let link = self.link_mut(flow.0).expect("checked alive above");
        let arrival = down_done.max(link.last_arrival[flow.1]);
        link.last_arrival[flow.1] = arrival;
        let input = Input::Message { conn: link.ends[flow.1].conn, message };
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
        let id = *self.nodes[from.0].by_conn.get(&conn)?;
        let link = self.link(id)?;
        Some((id, usize::from(link.ends[0].node == from && link.ends[0].conn == conn)))
    }

    /// `from` closes `conn`: what it sent still arrives, then the other end sees
    /// `Disconnected`. The closer hears nothing more on it.
    pub fn close(&mut self, now: Time, from: NodeIdx, conn: ConnId, queue: &mut Queue) {
        let Some((id, other)) = self.other_end(from, conn) else {
            return;
        };
        self.nodes[from.0].by_conn.remove(&conn);
        // `other_end` found the link in `links` just above.
        let link = self.link_mut(id).expect("other_end only names live links");
        link.ends[1 - other].open = false;
        if !link.ends[other].open {
            self.links[id as usize] = None;
            return;
        }
        if self.nodes[from.0].uplink.has_pending((id, other), now) {
            self.nodes[from.0].uplink.push((id, other), Queued::Fin);
            self.kick_uplink(now, from, queue);
        } else {
            self.fin(now, (id, other), queue);
        }
    }

    /// An input arriving at `end` of `link`: the machine it is for, that machine's life and the
    /// node at the other end; `None` when that end closed (or reset) since it was sent.
    pub fn arrive(&mut self, link: LinkId, end: usize, input: &Input) -> Option<(NodeIdx, u32, NodeIdx)> {
        let l = self.link_mut(link)?;
        let (e, other) = (l.ends[end], l.ends[1 - end].node);
        if !e.open {
            return None;
        }
        if matches!(input, Input::Disconnected { .. }) {
            l.ends[end].open = false;
            if !l.ends[1 - end].open {
                self.links[link as usize] = None;
            }
            self.nodes[e.node.0].by_conn.remove(&e.conn);
        }
        Some((e.node, e.incarnation, other))
    }

    /// Links currently open at `node`, as `(conn, remote node)`.
    pub fn connections(&self, node: NodeIdx) -> Vec<(ConnId, NodeIdx)> {
        self.nodes[node.0]
            .by_conn
            .iter()
            .map(|(conn, id)| {
                // `by_conn` names live links only (see the module docs).
                let l = self.link(*id).expect("by_conn names live links");
                let other = usize::from(l.ends[0].node == node && l.ends[0].conn == *conn);
                (*conn, l.ends[other].node)
            })
            .collect()
    }

    /// Resets a link: both open ends close now; each live one hears `Disconnected` after a
    /// latency (an opener also when its `Connected` had not arrived yet: it "could not open").
    fn reset(&mut self, now: Time, id: LinkId, queue: &mut Queue) {
        let Some(link) = self.links.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        let latency = self.latency(link.ends[0].node, link.ends[1].node);
        for (side, end) in link.ends.iter().enumerate() {
            if !end.open {
                continue;
            }
            self.nodes[end.node.0].by_conn.remove(&end.conn);
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

/// Time to push `size_bytes` through a link of `rate` bytes per second (rounded up to 1 µs).
fn transfer(size_bytes: u64, rate: Option<u64>) -> Duration {
    match rate {
        None => Duration::ZERO,
        Some(rate) => Duration::from_micros((u128::from(size_bytes) * 1_000_000).div_ceil(u128::from(rate)) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(latency_ms: u64, rate: Option<u64>, loss: f64) -> LinkSpec {
        LinkSpec {
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::ZERO,
            up_bytes_per_s: rate,
            down_bytes_per_s: rate,
            loss,
        }
    }

    fn drain(net: &mut Network, queue: &mut Queue) -> Vec<(Time, String)> {
        std::iter::from_fn(|| loop {
            match queue.pop()? {
                (at, Item::UplinkDone { node, transmission }) => net.uplink_done(at, node, transmission, queue),
                (_, Item::Local { input: Input::Sent { .. }, .. }) => {}
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
        for node in (0..100_001).map(NodeIdx) {
            assert_eq!(node_of_addr(node_addr(node)), Some(node));
        }
        for stranger in ["10.0.0.2:7000", "10.0.1.0:7000", "10.0.1.251:7000", "192.168.0.1:7000", "[::1]:7000"] {
            assert_eq!(node_of_addr(stranger.parse().expect("an address")), None, "{stranger}");
        }
        let net = Network::new(1, vec![link(10, None, 0.0); 3]);
        let third = node_addr(NodeIdx(2));
        assert_eq!(net.node_at(SocketAddr::new(third.ip(), 40_001)), Some(NodeIdx(2)));
        assert_eq!(net.listener_at(SocketAddr::new(third.ip(), 40_001)), None);
        assert_eq!(net.node_at(node_addr(NodeIdx(3))), None, "only three nodes");
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
        net.send(at, NodeIdx(1), ConnId::Outbound(1), (Message::List, 1000), &mut q);
        net.send(at, NodeIdx(1), ConnId::Outbound(1), (Message::List, 1000), &mut q);
        let arrivals: Vec<Time> = drain(&mut net, &mut q).into_iter().map(|(t, _)| t).collect();
        assert_eq!(arrivals, [Time::from_millis(1030), Time::from_millis(2030)]);
    }

    #[test]
    fn a_frame_counts_as_sent_when_its_transmission_starts() {
        let (mut net, mut q) = two_nodes(link(10, Some(1000), 0.0));
        net.connect(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), node_addr(NodeIdx(0)), &mut q);
        drain(&mut net, &mut q);
        let at = Time::from_millis(20);
        net.send(at, NodeIdx(1), ConnId::Outbound(1), (Message::List, 1000), &mut q);
        net.send(at, NodeIdx(1), ConnId::Outbound(1), (Message::List, 1000), &mut q);
        let mut sent = Vec::new();
        while let Some((time, item)) = q.pop() {
            match item {
                Item::UplinkDone { node, transmission } => net.uplink_done(time, node, transmission, &mut q),
                Item::Local { input: Input::Sent { conn, frames }, .. } => sent.push((time, conn, frames)),
                _ => {}
            }
        }
        let conn = ConnId::Outbound(1);
        assert_eq!(sent, [(at, conn, 1), (Time::from_millis(1020), conn, 1)]);
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

    #[test]
    fn close_flushes_then_tells_the_other_end() {
        let (mut net, mut q) = two_nodes(link(10, Some(1000), 0.0));
        net.connect(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), node_addr(NodeIdx(0)), &mut q);
        drain(&mut net, &mut q);
        net.send(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), (Message::List, 1000), &mut q);
        net.close(Time::ZERO, NodeIdx(1), ConnId::Outbound(1), &mut q);
        let events = drain(&mut net, &mut q);
        assert_eq!(events[0].0, Time::from_millis(1010));
        assert_eq!(events[1].0, Time::from_millis(1010), "the close waits for the data: {events:?}");
        assert!(events[0].1.contains("Message"));
        assert!(events[1].1.contains("Disconnected"));
    }
}
