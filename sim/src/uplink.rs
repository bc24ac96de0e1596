//! One node's uplink: a FIFO queue per connection direction ("flow"), served round-robin, one
//! message at a time.
//!
//! A single FIFO over all connections would make a `Hello` on a new connection wait behind
//! every block queued for the others — head-of-line blocking that real TCP sockets, each with
//! its own buffer sharing the link fairly, do not have. Round-robin per flow gives each busy
//! connection an equal share of the rate. The network decides when a transmission ends; this
//! type only keeps the queues, the order, and until when the uplink is busy.
//!
//! A message that finds the uplink idle starts at once, and its arrival is scheduled then; the
//! network is woken (one queue item) only when something waits behind a transmission.

use std::collections::VecDeque;

use p2p_core::wire::Message;
use p2p_core::Time;

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
    /// The flow of the last transmission, and when that transmission ends.
    sending: Option<(Flow, Time)>,
    /// The wake-up scheduled for the end of the current transmission, by number.
    wake: Option<u64>,
    /// Counts wake-ups (and lives), so a stale one is recognised.
    wakes: u64,
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

    /// Until when the uplink is busy, if it is at `now`.
    pub fn busy_until(&self, now: Time) -> Option<Time> {
        self.sending.map(|(_, until)| until).filter(|until| *until > now)
    }

    /// Whether anything waits for the uplink.
    pub fn has_queued(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Whether `flow` has anything queued or being sent at `now`.
    pub fn has_pending(&self, flow: Flow, now: Time) -> bool {
        self.ready.iter().any(|(f, _)| *f == flow) || self.sending.is_some_and(|(f, until)| f == flow && until > now)
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

    /// Marks `flow` as sending until `until`.
    pub fn start(&mut self, flow: Flow, until: Time) {
        self.sending = Some((flow, until));
    }

    /// Whether a wake-up is scheduled.
    pub fn is_waking(&self) -> bool {
        self.wake.is_some()
    }

    /// Numbers a new wake-up, to be scheduled for the end of the current transmission.
    pub fn plan_wake(&mut self) -> u64 {
        self.wakes += 1;
        self.wake = Some(self.wakes);
        self.wakes
    }

    /// Whether wake-up `wake` is the one scheduled (and no longer is).
    pub fn take_wake(&mut self, wake: u64) -> bool {
        if self.wake != Some(wake) {
            return false;
        }
        self.wake = None;
        true
    }

    /// Forgets everything (the node went down); wake-ups planned before are stale.
    pub fn clear(&mut self) {
        self.ready.clear();
        self.sending = None;
        self.wake = None;
        self.wakes += 1;
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
