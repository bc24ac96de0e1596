//! One node's uplink as a fluid link: the connections with bytes to send ("flows") share its
//! rate max-min fairly, and each connection has a bounded send buffer in front of the link.
//!
//! Per flow, frames first wait in the application's queue (what the machine sent and the
//! driver holds), where a control frame (anything but `Data`) goes ahead of waiting `Data`
//! frames, then enter the send buffer — a frame enters whole, when it fits in
//! [`SEND_BUFFER_BYTES`] beside what is there or the buffer is empty — and leave the buffer
//! front first at the flow's rate, each taking its [`Frame::link_bytes`] (its size and its
//! packets' headers) of the link. A `Data` frame leaving is what the machine hears as
//! `Input::Sent` (its bytes are gone, none can be recalled or is still queued at this end);
//! the receiver hears the frame after the link's latency.
//!
//! A flow is *active* while its buffer holds a frame (a flow with an empty buffer has nothing
//! waiting either: the first waiting frame always enters an empty buffer). The active flows of
//! an uplink share its rate by water-filling ([`fair_shares`]): each flow may be capped (the
//! network caps it at its receiver's downlink share), a capped flow gets its cap, and what it
//! leaves is split equally among the others. Rates are piecewise constant: they change only
//! when a flow becomes active or idle, or a cap changes, so the network recomputes them at
//! those events and wakes the uplink when the next frame finishes leaving — one event per frame
//! departure, never one per packet. That is the timing packet interleaving gives: a `Hello` on
//! a new connection leaves after size / (rate / active flows), not after the blocks queued on
//! other connections.
//!
//! While no cap binds — the usual case — every flow has the same rate, so progress is kept as
//! one count of bytes served per flow and a heap of when each front frame is done: an event
//! costs O(log flows) even on a tracker's uplink with thousands of replies under way. While a
//! cap binds, each flow keeps its own rate and bytes left.
//!
//! This type keeps the queues, the progress and the rates; the network decides the caps, what
//! becomes of a frame that left, and when to wake.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use p2p_core::small::VecMap;
use p2p_core::wire::Message;
use p2p_core::{ConnId, Time};

use crate::queue::LinkId;
use crate::scenario::NodeIdx;

/// Bytes one connection's send buffer holds, like a kernel socket buffer. Linux starts a TCP
/// socket at 16 KiB and autotunes it towards 4 MiB with the bandwidth-delay product; a bulk
/// connection on a home or rack link settles at a few hundred KiB. 256 KiB holds one block
/// ([`p2p_core::limits::BLOCK_BYTES`]) or many small frames: what a sender has committed and
/// can no longer recall with a `Cancel` is about one block per connection.
pub const SEND_BUFFER_BYTES: u64 = 256 * 1024;

/// A link and the end its frames travel to.
pub type Flow = (LinkId, usize);

/// A frame on its way: the message, its size, what it costs the link, and the extra delay its
/// retransmissions will cost.
#[derive(Debug)]
pub struct Frame {
    /// The message.
    pub message: Message,
    /// Bytes of the encoded frame: what it takes of the send buffer.
    pub size_bytes: u64,
    /// Bytes it occupies on the link: the frame and the headers of the packets that carry it.
    pub link_bytes: u64,
    /// Retransmission timeouts it will wait out (lost copies are decided when it is sent).
    pub retransmit_delay: Duration,
}

/// One connection direction with something to send.
#[derive(Debug)]
struct FlowState {
    /// The receiving node.
    to: NodeIdx,
    /// The sender's connection, for `Sent` reports.
    conn: ConnId,
    /// `frames[..buffered]` are in the send buffer (the front one leaving), the rest wait.
    frames: VecDeque<Frame>,
    buffered: usize,
    buffered_bytes: u64,
    /// Bytes of the front frame not yet gone, as of [`Uplink::updated`] (explicit rates).
    front_left_bytes: f64,
    /// The uplink's served bytes at which the front frame is gone (equal shares).
    front_done: f64,
    /// Bytes per second while active (explicit rates).
    rate: f64,
    /// The most the receiver's downlink gives this flow (infinite: no cap), as last told.
    cap: f64,
    /// The rate is the flow's cap (its receiver limits it), not the uplink's share.
    capped: bool,
    /// `Data` frames that left and the machine has not been told of.
    unreported: u32,
    /// The sender closed the connection after these frames.
    fin: bool,
}

/// A flow that finished with a frame leaving or being dropped.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// The flow has nothing left: the receiver's downlink has one sender fewer.
    Idle(Flow, NodeIdx),
    /// The flow was closed and has sent everything: the other end hears the close now.
    Finished(Flow),
}

/// Equal shares, the usual case (no flow's cap is below an equal split): every flow sends at
/// `level`, so progress is one number, `served` — the bytes each flow could send since the
/// mode began — and front frames finish in order of `front_done` (a heap), which makes an
/// event cost O(log flows) however many flows a tracker's uplink holds.
#[derive(Debug, Default)]
struct Equal {
    level: f64,
    served: f64,
    /// `(front_done as bits, flow)`; an entry whose flow has since moved on is skipped. Bits of
    /// a non-negative f64 order like the number.
    done: BinaryHeap<Reverse<(u64, Flow)>>,
}

/// The flows of one node's uplink; see the module docs.
#[derive(Debug, Default)]
pub struct Uplink {
    /// Active flows (a tracker's uplink may hold thousands).
    flows: BTreeMap<Flow, FlowState>,
    /// Equal shares when no cap binds; explicit per-flow rates otherwise.
    equal: Option<Equal>,
    /// The time the flows' progress is counted to.
    updated: Time,
    /// Flows came, went, or got new caps since the last [`reshare`](Uplink::reshare).
    stale: bool,
    /// The flows' caps, as a multiset of their bits (to find the smallest at once). A cap is
    /// a receiver's downlink share, most often its rate over its flow count, so values repeat
    /// and a sorted vector of the distinct ones stays short.
    caps: VecMap<u64, u32>,
    /// The scheduled wake-up: its number and time.
    wake: Option<(u32, Time)>,
    /// Counts wake-ups (and lives), so a stale one is recognised (numbers wrap after 2^32
    /// wake-ups of one uplink, billions of frames apart).
    wakes: u32,
    /// Emptied frame queues kept for reuse, so a busy uplink does not allocate per flow.
    spare: Vec<VecDeque<Frame>>,
    /// Flows that may have unreported frames, in the order they got them.
    unreported: Vec<Flow>,
    /// Reports of flows that went idle before their reports were taken.
    reports: Vec<(ConnId, u32)>,
    /// Scratch for explicit rates and for flows going idle.
    scratch: Scratch,
}

#[derive(Debug, Default)]
struct Scratch {
    caps: Vec<f64>,
    shares: Vec<f64>,
    order: Vec<usize>,
    idle: Vec<Flow>,
}

impl Uplink {
    /// Queues `frame` on `flow` (to node `to`, the sender's `conn`), after
    /// [`advance`](Uplink::advance) to now; a flow that becomes active starts with `cap`.
    /// Returns true when the flow became active.
    pub fn push(&mut self, (flow, to, conn): (Flow, NodeIdx, ConnId), frame: Frame, cap: f64) -> bool {
        if let Some(f) = self.flows.get_mut(&flow) {
            f.enqueue(frame);
            f.fill();
            return false;
        }
        let mut frames = self.spare.pop().unwrap_or_default();
        frames.push_back(frame);
        let mut state = FlowState {
            to,
            conn,
            frames,
            buffered: 0,
            buffered_bytes: 0,
            front_left_bytes: 0.0,
            front_done: 0.0,
            rate: 0.0,
            cap,
            capped: false,
            unreported: 0,
            fin: false,
        };
        state.fill();
        if let Some(eq) = &mut self.equal {
            eq.start_front(flow, &mut state);
        }
        self.flows.insert(flow, state);
        *self.caps.get_or_insert_with(cap.to_bits(), || 0) += 1;
        self.stale = true;
        true
    }

    /// Whether `flow` has anything to send.
    pub fn has_pending(&self, flow: Flow) -> bool {
        self.flows.contains_key(&flow)
    }

    /// The sender closed `flow`: it finishes after its frames (false when it has none).
    pub fn close(&mut self, flow: Flow) -> bool {
        self.flows.get_mut(&flow).map(|f| f.fin = true).is_some()
    }

    /// Removes `flow` with everything queued on it (its link is gone). Returns the receiver
    /// when the flow was active.
    pub fn remove(&mut self, flow: Flow) -> Option<NodeIdx> {
        let state = self.take_flow(flow)?;
        let to = state.to;
        self.recycle(state.frames);
        Some(to)
    }

    /// Counts every flow's progress up to `now`: a front frame that is done leaves (into
    /// `departed`, with its flow), waiting frames enter the freed room, and flows left with
    /// nothing report a [`Change`]. Rates hold until [`reshare`](Uplink::reshare).
    pub fn advance(&mut self, now: Time, departed: &mut Vec<(Flow, Frame)>, changes: &mut Vec<Change>) {
        let elapsed_s = now.saturating_since(self.updated).as_secs_f64();
        self.updated = now;
        let mut idle = std::mem::take(&mut self.scratch.idle);
        match &mut self.equal {
            Some(eq) => eq.advance(elapsed_s, &mut self.flows, (departed, &mut self.unreported, &mut idle)),
            None => {
                for (flow, f) in &mut self.flows {
                    f.front_left_bytes -= f.rate * elapsed_s;
                    if f.front_left_bytes <= done_within(f.rate) {
                        let frame = f.depart();
                        if f.unreported == 1 && is_data(&frame) {
                            self.unreported.push(*flow);
                        }
                        departed.push((*flow, frame));
                        f.fill();
                    }
                    if f.buffered == 0 {
                        idle.push(*flow);
                    }
                }
            }
        }
        for flow in idle.drain(..) {
            // Listed just above from the flows present.
            let state = self.take_flow(flow).expect("an idle flow is present");
            changes.push(Change::Idle(flow, state.to));
            if state.fin {
                changes.push(Change::Finished(flow));
            } else if state.unreported > 0 {
                self.reports.push((state.conn, state.unreported));
            }
            self.recycle(state.frames);
        }
        self.scratch.idle = idle;
    }

    /// Shares `capacity` bytes per second (infinite: unlimited) among the active flows, each
    /// within its cap (see [`fair_shares`]), if anything changed since the last time.
    pub fn reshare(&mut self, capacity: f64) {
        if !std::mem::take(&mut self.stale) {
            return;
        }
        let equal = capacity / self.flows.len().max(1) as f64;
        let min_cap = self.caps.keys().next().map_or(f64::INFINITY, |bits| f64::from_bits(*bits));
        if equal.is_finite() && min_cap >= equal {
            let eq = self.equal.get_or_insert_with(|| Equal::starting(&mut self.flows));
            eq.level = equal;
            return;
        }
        if let Some(eq) = self.equal.take() {
            for f in self.flows.values_mut() {
                f.front_left_bytes = (f.front_done - eq.served).max(0.0);
            }
        }
        let s = &mut self.scratch;
        s.caps.clear();
        s.caps.extend(self.flows.values().map(|f| f.cap));
        fair_shares(capacity, &s.caps, &mut s.order, &mut s.shares);
        for (f, rate) in self.flows.values_mut().zip(&s.shares) {
            f.rate = *rate;
            f.capped = *rate >= f.cap;
        }
    }

    /// Whether flows came, went or got new caps since the last [`reshare`](Uplink::reshare).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// How many flows have something to send.
    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// `flow`'s rate as of the last [`reshare`](Uplink::reshare), and whether that rate is its
    /// cap (its receiver, not this uplink, holds it there); `None` when it is not active.
    pub fn rate_of(&self, flow: Flow) -> Option<(f64, bool)> {
        self.flows.get(&flow).map(|f| rate_and_capped(&self.equal, f))
    }

    /// [`rate_of`](Uplink::rate_of) a flow the caller knows to be active: under equal shares
    /// its flows are not searched.
    pub fn active_rate(&self, flow: Flow) -> Option<(f64, bool)> {
        debug_assert!(self.flows.contains_key(&flow), "flow {flow:?} is not active");
        match &self.equal {
            Some(eq) => Some((eq.level, false)),
            None => self.rate_of(flow),
        }
    }

    /// The rate every active flow has while no cap binds (equal shares), as of the last
    /// [`reshare`](Uplink::reshare); `None` while flows have rates of their own.
    pub fn equal_rate(&self) -> Option<f64> {
        self.equal.as_ref().map(|eq| eq.level)
    }

    /// Appends each active flow's receiver and rate (as of the last
    /// [`reshare`](Uplink::reshare)) to `out`, in the same order on every call while the set
    /// of flows stays the same.
    pub fn rates(&self, out: &mut Vec<(NodeIdx, f64)>) {
        out.extend(self.flows.values().map(|f| (f.to, rate_and_capped(&self.equal, f).0)));
    }

    /// Gives `flow` a new cap (applied at the next [`reshare`](Uplink::reshare)); returns its
    /// current rate and whether that rate is its old cap (`None`: not active).
    pub fn set_cap(&mut self, flow: Flow, cap: f64) -> Option<(f64, bool)> {
        let f = self.flows.get_mut(&flow)?;
        let now = rate_and_capped(&self.equal, f);
        let old = std::mem::replace(&mut f.cap, cap);
        if old.to_bits() != cap.to_bits() {
            multiset_remove(&mut self.caps, old.to_bits());
            *self.caps.get_or_insert_with(cap.to_bits(), || 0) += 1;
            self.stale = true;
        }
        Some(now)
    }

    /// When the first front frame finishes leaving at the current rates.
    pub fn next_departure(&mut self) -> Option<Time> {
        let seconds = match &mut self.equal {
            Some(eq) => eq.next_done(&self.flows)? / eq.level,
            None => self.flows.values().map(|f| f.front_left_bytes.max(0.0) / f.rate).min_by(f64::total_cmp)?,
        };
        // A finite rate over at most a frame's bytes is far below u64::MAX microseconds; an
        // infinite rate gives zero.
        Some(self.updated + Duration::from_micros((seconds * 1e6).ceil() as u64))
    }

    /// Takes the `Sent` reports due, as `(conn, frames)` of flows still open at this end.
    pub fn take_reports(&mut self, mut report: impl FnMut(ConnId, u32)) {
        for (conn, frames) in self.reports.drain(..) {
            report(conn, frames);
        }
        for flow in self.unreported.drain(..) {
            let Some(f) = self.flows.get_mut(&flow) else { continue };
            let frames = std::mem::take(&mut f.unreported);
            if frames > 0 && !f.fin {
                report(f.conn, frames);
            }
        }
    }

    /// Numbers a wake-up for `at`, unless one is already planned by then (an early wake-up
    /// finds nothing due and plans again, which costs less than a stale item per change);
    /// returns its number when the caller must schedule it.
    pub fn plan_wake(&mut self, at: Option<Time>) -> Option<u32> {
        let Some(at) = at else {
            self.wake = None;
            return None;
        };
        if self.wake.is_some_and(|(_, planned)| planned <= at) {
            return None;
        }
        self.wakes = self.wakes.wrapping_add(1);
        self.wake = Some((self.wakes, at));
        Some(self.wakes)
    }

    /// Whether wake-up `wake` is the one scheduled (and no longer is).
    pub fn take_wake(&mut self, wake: u32) -> bool {
        if self.wake.map(|(number, _)| number) != Some(wake) {
            return false;
        }
        self.wake = None;
        true
    }

    /// Empties the uplink (the node went down); returns its active flows and their receivers.
    /// Wake-ups planned before are stale.
    pub fn clear(&mut self) -> Vec<(Flow, NodeIdx)> {
        let flows: Vec<(Flow, NodeIdx)> = self.flows.iter().map(|(flow, f)| (*flow, f.to)).collect();
        for (_, state) in std::mem::take(&mut self.flows) {
            self.recycle(state.frames);
        }
        self.equal = None;
        self.caps = VecMap::new();
        self.unreported.clear();
        self.reports.clear();
        self.wake = None;
        self.wakes = self.wakes.wrapping_add(1);
        flows
    }

    /// Takes `flow` out of the uplink, keeping the caps and the mode's books.
    fn take_flow(&mut self, flow: Flow) -> Option<FlowState> {
        let state = self.flows.remove(&flow)?;
        multiset_remove(&mut self.caps, state.cap.to_bits());
        self.stale = true;
        if self.flows.is_empty() {
            self.equal = None;
        }
        Some(state)
    }

    fn recycle(&mut self, mut frames: VecDeque<Frame>) {
        frames.clear();
        self.spare.push(frames);
    }
}

impl Equal {
    /// Equal shares begin for `flows`, whose progress was counted in explicit bytes left.
    fn starting(flows: &mut BTreeMap<Flow, FlowState>) -> Equal {
        let mut eq = Equal::default();
        for (flow, f) in flows.iter_mut() {
            eq.start_front(*flow, f);
        }
        eq
    }

    /// `f`'s front frame, with `front_left_bytes` to go, is now counted in served bytes.
    fn start_front(&mut self, flow: Flow, f: &mut FlowState) {
        f.front_done = self.served + f.front_left_bytes;
        self.done.push(Reverse((f.front_done.to_bits(), flow)));
    }

    /// Every flow sent `level × elapsed_s` more; front frames that are done leave (see
    /// [`Uplink::advance`]), flows left with nothing go into `idle`.
    fn advance(
        &mut self,
        elapsed_s: f64,
        flows: &mut BTreeMap<Flow, FlowState>,
        (departed, unreported, idle): (&mut Vec<(Flow, Frame)>, &mut Vec<Flow>, &mut Vec<Flow>),
    ) {
        self.served += self.level * elapsed_s;
        let limit = self.served + done_within(self.level);
        while let Some(Reverse((bits, flow))) = self.done.peek().copied() {
            if f64::from_bits(bits) > limit {
                return;
            }
            self.done.pop();
            let Some(f) = flows.get_mut(&flow).filter(|f| f.front_done.to_bits() == bits) else {
                continue;
            };
            let frame = f.depart();
            if f.unreported == 1 && is_data(&frame) {
                unreported.push(flow);
            }
            departed.push((flow, frame));
            f.fill();
            if f.buffered == 0 {
                idle.push(flow);
            } else {
                self.start_front(flow, f);
            }
        }
    }

    /// Served bytes still to go until the first front frame is done.
    fn next_done(&mut self, flows: &BTreeMap<Flow, FlowState>) -> Option<f64> {
        while let Some(Reverse((bits, flow))) = self.done.peek().copied() {
            if flows.get(&flow).is_some_and(|f| f.front_done.to_bits() == bits) {
                return Some((f64::from_bits(bits) - self.served).max(0.0));
            }
            self.done.pop();
        }
        None
    }
}

/// An active flow's rate and whether it is its cap: every flow's is the level under equal
/// shares (`equal`), where no cap binds.
fn rate_and_capped(equal: &Option<Equal>, f: &FlowState) -> (f64, bool) {
    match equal {
        Some(eq) => (eq.level, false),
        None => (f.rate, f.capped),
    }
}

fn is_data(frame: &Frame) -> bool {
    matches!(frame.message, Message::Data { .. })
}

/// Bytes of a front frame at `rate` that count as gone: a wake-up rounds a finish up to the
/// next microsecond, so what is left then is less than a microsecond's worth, or float dust.
fn done_within(rate: f64) -> f64 {
    rate * 1e-6 + 1e-3
}

fn multiset_remove(set: &mut VecMap<u64, u32>, key: u64) {
    if let Some(count) = set.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            set.remove(&key);
        }
    }
}

impl FlowState {
    /// Moves waiting frames into the send buffer while they fit (the first always does).
    fn fill(&mut self) {
        while let Some(frame) = self.frames.get(self.buffered) {
            if self.buffered > 0 && self.buffered_bytes + frame.size_bytes > SEND_BUFFER_BYTES {
                break;
            }
            if self.buffered == 0 {
                self.front_left_bytes = frame.link_bytes as f64;
            }
            self.buffered += 1;
            self.buffered_bytes += frame.size_bytes;
        }
    }

    /// Queues `frame` behind the frames in the send buffer: a control frame (anything but
    /// `Data`) goes ahead of the `Data` frames still waiting, so announcements, requests and
    /// cancels never wait for bulk data that has not entered the buffer yet.
    fn enqueue(&mut self, frame: Frame) {
        let waiting_data =
            (!is_data(&frame)).then(|| self.frames.iter().skip(self.buffered).position(is_data)).flatten();
        match waiting_data {
            Some(at) => self.frames.insert(self.buffered + at, frame),
            None => self.frames.push_back(frame),
        }
    }

    /// The front frame has left; a `Data` frame is to be reported sent.
    fn depart(&mut self) -> Frame {
        // Only active flows (a non-empty buffer) are advanced.
        let frame = self.frames.pop_front().expect("an active flow has a front frame");
        if is_data(&frame) {
            self.unreported += 1;
        }
        self.buffered -= 1;
        self.buffered_bytes -= frame.size_bytes;
        self.front_left_bytes = self.frames.front().filter(|_| self.buffered > 0).map_or(0.0, |f| f.link_bytes as f64);
        frame
    }
}

/// Max-min fair shares of `capacity` among flows with `caps` (both in bytes per second,
/// infinite for none), written into `shares` (`order` is scratch): flows are filled in order of
/// their caps; one whose cap is below an equal split of what is left gets its cap, the rest
/// split the remainder equally. Every share is at most its cap and the shares sum to at most
/// the capacity.
pub fn fair_shares(capacity: f64, caps: &[f64], order: &mut Vec<usize>, shares: &mut Vec<f64>) {
    let equal = capacity / caps.len().max(1) as f64;
    shares.clear();
    shares.extend(caps.iter().map(|cap| cap.min(equal)));
    // Usually no cap binds and every flow has its equal split already.
    if caps.iter().all(|cap| *cap >= equal) {
        return;
    }
    order.clear();
    order.extend(0..caps.len());
    order.sort_by(|a, b| caps[*a].total_cmp(&caps[*b]));
    let (mut left, mut count) = (capacity, caps.len());
    for &i in order.iter() {
        let share = caps[i].min(left / count as f64);
        shares[i] = share;
        if share.is_finite() {
            left -= share;
        }
        count -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    fn shares(capacity: f64, caps: &[f64]) -> Vec<f64> {
        let mut shares = Vec::new();
        fair_shares(capacity, caps, &mut Vec::new(), &mut shares);
        shares
    }

    fn frame(size_bytes: u64) -> Frame {
        Frame { message: Message::List, size_bytes, link_bytes: size_bytes, retransmit_delay: Duration::ZERO }
    }

    #[test]
    fn two_flows_on_one_uplink_each_get_half() {
        assert_eq!(shares(1000.0, &[INF, INF]), [500.0, 500.0]);
    }

    #[test]
    fn a_flow_capped_by_its_receiver_leaves_the_rest_to_the_others() {
        assert_eq!(shares(1000.0, &[INF, 100.0, INF]), [450.0, 100.0, 450.0]);
        assert_eq!(shares(1000.0, &[600.0, 300.0]), [600.0, 300.0], "caps below the split sum under it");
    }

    #[test]
    fn an_unlimited_uplink_gives_each_flow_its_cap() {
        assert_eq!(shares(INF, &[200.0, INF]), [200.0, INF]);
    }

    fn data(size_bytes: u64) -> Frame {
        let file_id = p2p_core::FileId(p2p_core::Digest([1; 32]));
        let message = Message::Data { file_id, chunk: p2p_core::ChunkIndex(0), offset: 0, bytes: bytes::Bytes::new() };
        Frame { message, size_bytes, link_bytes: size_bytes, retransmit_delay: Duration::ZERO }
    }

    fn reports(up: &mut Uplink) -> Vec<(ConnId, u32)> {
        let mut reports = Vec::new();
        up.take_reports(|conn, frames| reports.push((conn, frames)));
        reports
    }

    #[test]
    fn the_send_buffer_takes_frames_while_they_fit_and_a_big_one_only_when_empty() {
        let mut up = Uplink::default();
        let key = ((1, 1), NodeIdx(2), ConnId::Outbound(1));
        assert!(up.push(key, data(SEND_BUFFER_BYTES / 2), INF));
        assert!(!up.push(key, data(SEND_BUFFER_BYTES / 2), INF));
        assert!(!up.push(key, data(1), INF), "the buffer is full");
        assert!(!up.push(key, data(SEND_BUFFER_BYTES * 2), INF));
        assert_eq!(reports(&mut up), [], "nothing left yet");

        up.reshare(SEND_BUFFER_BYTES as f64);
        let (mut departed, mut changes) = (Vec::new(), Vec::new());
        let half = up.next_departure().expect("active");
        assert_eq!(half, Time::from_millis(500));
        up.advance(half, &mut departed, &mut changes);
        assert_eq!(departed.len(), 1);
        assert_eq!(reports(&mut up), [(ConnId::Outbound(1), 1)], "the first frame left");
        assert_eq!(reports(&mut up), [], "each frame is reported once");
        // The 1-byte frame entered the freed room, the big one waits: it leaves after both.
        up.reshare(SEND_BUFFER_BYTES as f64);
        let second = up.next_departure().expect("active");
        assert_eq!(second, Time::from_millis(1000));
        up.advance(second, &mut departed, &mut changes);
        assert_eq!(reports(&mut up), [(ConnId::Outbound(1), 1)]);
        assert!(changes.is_empty());
    }

    #[test]
    fn a_control_frame_goes_ahead_of_waiting_data_but_not_of_the_buffer() {
        let mut up = Uplink::default();
        let key = ((1, 1), NodeIdx(2), ConnId::Outbound(1));
        up.push(key, data(SEND_BUFFER_BYTES), INF);
        up.push(key, data(SEND_BUFFER_BYTES), INF);
        up.push(key, frame(100), INF);
        up.reshare(SEND_BUFFER_BYTES as f64);
        let (mut departed, mut changes) = (Vec::new(), Vec::new());
        while let Some(at) = up.next_departure() {
            up.advance(at, &mut departed, &mut changes);
            up.reshare(SEND_BUFFER_BYTES as f64);
        }
        let kinds: Vec<&str> = departed.iter().map(|(_, f)| f.message.kind()).collect();
        assert_eq!(kinds, ["data", "list", "data"]);
    }

    #[test]
    fn a_flow_left_with_nothing_goes_idle_and_a_closed_one_finishes() {
        let mut up = Uplink::default();
        up.push(((1, 1), NodeIdx(2), ConnId::Outbound(1)), frame(1000), INF);
        up.push(((2, 0), NodeIdx(3), ConnId::Inbound(1)), frame(3000), INF);
        assert!(up.close((1, 1)));
        up.reshare(2000.0);
        let (mut departed, mut changes) = (Vec::new(), Vec::new());
        let first = up.next_departure().expect("active");
        assert_eq!(first, Time::from_millis(1000));
        up.advance(first, &mut departed, &mut changes);
        assert_eq!(changes, [Change::Idle((1, 1), NodeIdx(2)), Change::Finished((1, 1))]);
        up.reshare(2000.0);
        assert_eq!(up.next_departure(), Some(Time::from_millis(2000)), "2000 bytes left at the full rate");
    }

    #[test]
    fn a_cap_binding_mid_frame_moves_from_equal_shares_to_explicit_rates_without_losing_progress() {
        let mut up = Uplink::default();
        up.push(((1, 1), NodeIdx(2), ConnId::Outbound(1)), frame(1000), INF);
        up.push(((2, 1), NodeIdx(3), ConnId::Outbound(2)), frame(1000), INF);
        up.reshare(1000.0);
        assert_eq!(up.next_departure(), Some(Time::from_millis(2000)), "500 B/s each");
        let (mut departed, mut changes) = (Vec::new(), Vec::new());
        up.advance(Time::from_millis(1000), &mut departed, &mut changes);
        assert_eq!(up.set_cap((2, 1), 100.0), Some((500.0, false)));
        up.reshare(1000.0);
        assert_eq!(up.next_departure(), Some(Time::from_micros(1_555_556)), "500 bytes left at 900 B/s");
        up.advance(Time::from_micros(1_555_556), &mut departed, &mut changes);
        assert_eq!(departed.len(), 1);
        assert_eq!(changes, [Change::Idle((1, 1), NodeIdx(2))]);
        up.reshare(1000.0);
        assert_eq!(up.set_cap((2, 1), INF), Some((100.0, true)));
        up.reshare(1000.0);
        let left_bytes = 500.0 - 100.0 * 0.555_556;
        let done = 1_555_556 + (left_bytes * 1000.0) as u64 + 1;
        assert_eq!(up.next_departure(), Some(Time::from_micros(done)), "back to equal shares, alone at 1000 B/s");
    }
}
