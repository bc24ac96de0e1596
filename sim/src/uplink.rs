//! One node's uplink: a FIFO queue per connection direction ("flow"), served round-robin, one
//! message at a time.
//!
//! A single FIFO over all connections would make a `Hello` on a new connection wait behind
//! every block queued for the others — head-of-line blocking that real TCP sockets, each with
//! its own buffer sharing the link fairly, do not have. Round-robin per flow gives each busy
//! connection an equal share of the rate. The network decides when a transmission ends; this
//! type only keeps the queues and the order.

use std::collections::{BTreeMap, VecDeque};

use p2p_core::wire::Message;

use crate::queue::LinkId;

/// A link and the end its messages travel to.
pub type Flow = (LinkId, usize);

/// What waits in a flow.
#[derive(Debug)]
pub enum Queued {
    /// A message, its wire size, and the extra delay its retransmissions will cost.
    Message(Message, u64, std::time::Duration),
    /// The sender closed the connection after the messages before this.
    Fin,
}

/// The queues of one node's uplink.
#[derive(Debug, Default)]
pub struct Uplink {
    queues: BTreeMap<Flow, VecDeque<Queued>>,
    ready: VecDeque<Flow>,
    sending: Option<(Flow, Queued)>,
    /// Counts transmissions, so a stale "done" from an earlier life is recognised.
    pub transmission: u64,
}

impl Uplink {
    /// Queues `item` on `flow`.
    pub fn push(&mut self, flow: Flow, item: Queued) {
        let queue = self.queues.entry(flow).or_default();
        if queue.is_empty() {
            self.ready.push_back(flow);
        }
        queue.push_back(item);
    }

    /// Whether something is being sent now.
    pub fn is_busy(&self) -> bool {
        self.sending.is_some()
    }

    /// Whether `flow` has anything queued or being sent.
    pub fn has_pending(&self, flow: Flow) -> bool {
        self.queues.get(&flow).is_some_and(|q| !q.is_empty()) || self.sending.as_ref().is_some_and(|(f, _)| *f == flow)
    }

    /// Takes the next item round-robin (the caller sends it, or drops it if its link is gone).
    pub fn take_next(&mut self) -> Option<(Flow, Queued)> {
        let flow = self.ready.pop_front()?;
        let queue = self.queues.get_mut(&flow)?;
        let item = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&flow);
        } else {
            self.ready.push_back(flow);
        }
        Some((flow, item))
    }

    /// Marks `item` as being sent; returns its transmission number.
    pub fn start(&mut self, flow: Flow, item: Queued) -> u64 {
        self.transmission += 1;
        self.sending = Some((flow, item));
        self.transmission
    }

    /// The item whose transmission `transmission` just ended, if it is the current one.
    pub fn finish(&mut self, transmission: u64) -> Option<(Flow, Queued)> {
        if transmission != self.transmission {
            return None;
        }
        self.sending.take()
    }

    /// Forgets everything (the node went down).
    pub fn clear(&mut self) {
        self.queues.clear();
        self.ready.clear();
        self.sending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_take_turns() {
        let mut up = Uplink::default();
        for _ in 0..3 {
            up.push((1, 1), Queued::Message(Message::List, 10, std::time::Duration::ZERO));
        }
        up.push((2, 1), Queued::Fin);
        let order: Vec<LinkId> = std::iter::from_fn(|| up.take_next()).map(|((link, _), _)| link).collect();
        assert_eq!(order, [1, 2, 1, 1]);
    }
}
