//! One node's uplink: a FIFO queue per connection direction ("flow"), served round-robin, one
//! message at a time.
//!
//! A single FIFO over all connections would make a `Hello` on a new connection wait behind
//! every block queued for the others — head-of-line blocking that real TCP sockets, each with
//! its own buffer sharing the link fairly, do not have. Round-robin per flow gives each busy
//! connection an equal share of the rate. The network decides when a transmission ends; this
//! type only keeps the queues and the order.

use std::collections::VecDeque;

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
///
/// The flows with something queued are kept in turn order, each with its queue; a node has
/// few connections, so finding a flow is a short scan. Emptied queues are kept for reuse, so a
/// busy uplink does not allocate per message.
#[derive(Debug, Default)]
pub struct Uplink {
    ready: VecDeque<(Flow, VecDeque<Queued>)>,
    spare: Vec<VecDeque<Queued>>,
    sending: Option<(Flow, Queued)>,
    /// Counts transmissions, so a stale "done" from an earlier life is recognised.
    pub transmission: u64,
}

impl Uplink {
    /// Queues `item` on `flow`.
    pub fn push(&mut self, flow: Flow, item: Queued) {
        if let Some((_, queue)) = self.ready.iter_mut().find(|(f, _)| *f == flow) {
            queue.push_back(item);
            return;
        }
        let mut queue = self.spare.pop().unwrap_or_default();
        queue.push_back(item);
        self.ready.push_back((flow, queue));
    }

    /// Whether something is being sent now.
    pub fn is_busy(&self) -> bool {
        self.sending.is_some()
    }

    /// Whether `flow` has anything queued or being sent.
    pub fn has_pending(&self, flow: Flow) -> bool {
        self.ready.iter().any(|(f, _)| *f == flow) || self.sending.as_ref().is_some_and(|(f, _)| *f == flow)
    }

    /// Takes the next item round-robin (the caller sends it, or drops it if its link is gone).
    pub fn take_next(&mut self) -> Option<(Flow, Queued)> {
        let (flow, mut queue) = self.ready.pop_front()?;
        let item = queue.pop_front();
        if queue.is_empty() {
            self.spare.push(queue);
        } else {
            self.ready.push_back((flow, queue));
        }
        // A flow is in `ready` only while its queue holds something.
        Some((flow, item.expect("a ready flow has an item")))
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
