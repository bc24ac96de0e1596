//! The one central event queue: every future happening of a run — a scenario action, a machine's
//! timer, a message or connection event arriving over a link, a storage completion — is an
//! [`Item`] at a virtual [`Time`].
//!
//! Items at the same time come out in the order they were pushed (a global sequence number
//! breaks ties), so the order of a run depends only on what was pushed, never on a heap's
//! internal layout.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use p2p_core::{Input, Time};

use crate::scenario::NodeIdx;

/// A link between two machines, named by the network.
pub type LinkId = u64;

/// Something due at a time. Inputs are boxed: the heap moves entries on every push and pop,
/// and a `Message` inline would make each entry hundreds of bytes.
#[derive(Debug)]
pub enum Item {
    /// Scenario action number `n` (an index into `Scenario::actions`).
    Action(usize),
    /// A machine's `poll_timeout` has come, if it is still the machine's current timer.
    Timer {
        /// The machine.
        node: NodeIdx,
        /// Which life of the node set it.
        incarnation: u32,
        /// The time the machine asked for (stale when the machine has asked for another).
        wanted: Time,
    },
    /// An input for a machine that does not travel over a link (a storage completion, a
    /// command, a connection reset notice).
    Local {
        /// The machine.
        node: NodeIdx,
        /// Which life of the node it is for; dropped if the node has restarted since.
        incarnation: u32,
        /// The input.
        input: Box<Input>,
    },
    /// An input arriving over a link at one of its ends (dropped if that end closed).
    Wire {
        /// The link.
        link: LinkId,
        /// Which end: 0 is the opener, 1 the acceptor.
        end: usize,
        /// The input.
        input: Box<Input>,
    },
    /// A peer that left is gone for good: its machine stops and its last links reset.
    Vanish {
        /// The peer.
        node: NodeIdx,
        /// The life that left.
        incarnation: u32,
    },
    /// A node's uplink finished sending a message (transmission number `transmission`).
    UplinkDone {
        /// The sender.
        node: NodeIdx,
        /// Which transmission (stale if the node has gone down since).
        transmission: u64,
    },
    /// The run's end.
    End,
}

struct Entry {
    at: Time,
    seq: u64,
    item: Item,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A min-queue of items by `(time, push order)`.
#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("len", &self.heap.len()).field("pushed", &self.seq).finish()
    }
}

impl Queue {
    /// Schedules `item` at `at`.
    pub fn push(&mut self, at: Time, item: Item) {
        self.heap.push(Reverse(Entry { at, seq: self.seq, item }));
        self.seq += 1;
    }

    /// The time of the earliest item.
    pub fn peek_time(&self) -> Option<Time> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Takes the earliest item.
    pub fn pop(&mut self) -> Option<(Time, Item)> {
        self.heap.pop().map(|Reverse(e)| (e.at, e.item))
    }

    /// Items pushed so far (the number of events a run has processed or will process).
    pub fn pushed(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_come_out_in_push_order() {
        let mut q = Queue::default();
        q.push(Time::from_millis(5), Item::Action(1));
        q.push(Time::from_millis(1), Item::Action(2));
        q.push(Time::from_millis(5), Item::Action(3));
        let order: Vec<_> = std::iter::from_fn(|| q.pop())
            .map(|(_, item)| match item {
                Item::Action(n) => n,
                _ => unreachable!("only actions were pushed"),
            })
            .collect();
        assert_eq!(order, [2, 1, 3]);
    }
}
