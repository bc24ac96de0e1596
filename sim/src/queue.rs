//! The one central event queue: every future happening of a run — a scenario action, a machine's
//! timer, a message or connection event arriving over a link, a storage completion — is an
//! [`Item`] at a virtual [`Time`].
//!
//! Items come out in `(time, push order)` order: a global sequence number breaks ties, so the
//! order of a run depends only on what was pushed, never on the queue's internal layout.
//!
//! Layout, for speed at scale: items live in a slab and a four-ary heap (`dary_heap`) holds
//! only small `(time, sequence, slot)` keys, so sifting moves 24 bytes, not a whole input, no
//! item is boxed, and a pop over a large queue touches half the levels of a binary heap (the
//! scale benchmark's figures are in BENCHMARKS.md). Items pushed for the time of the item last taken
//! (storage completions, mostly) skip the heap: they go to a FIFO, which is already in push
//! order, and `pop` takes whichever of the heap's top and the FIFO's front comes first — the
//! same order a single heap would give.

use std::cmp::Reverse;
use std::collections::VecDeque;

use dary_heap::QuaternaryHeap;

use p2p_core::{Command, Input, Time};

use crate::scenario::NodeIdx;

/// A link between two machines, named by the network.
pub type LinkId = u64;

/// Something due at a time.
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
    /// connection reset notice).
    Local {
        /// The machine.
        node: NodeIdx,
        /// Which life of the node it is for; dropped if the node has restarted since.
        incarnation: u32,
        /// The input.
        input: Input,
    },
    /// A local command for a peer (boxed: rare, and larger than the other items).
    Command {
        /// The peer.
        node: NodeIdx,
        /// Which life of the node it is for; dropped if the node has restarted since.
        incarnation: u32,
        /// The command.
        command: Box<Command>,
    },
    /// An input arriving over a link at one of its ends (dropped if that end closed).
    Wire {
        /// The link.
        link: LinkId,
        /// Which end: 0 is the opener, 1 the acceptor.
        end: usize,
        /// The input.
        input: Input,
    },
    /// A peer that left is gone for good: its machine stops and its last links reset.
    Vanish {
        /// The peer.
        node: NodeIdx,
        /// The life that left.
        incarnation: u32,
    },
    /// A frame on a node's uplink finishes leaving (at the rates planned when this was pushed).
    UplinkDone {
        /// The sender.
        node: NodeIdx,
        /// Which wake-up of the uplink (stale if rates changed or the node went down since).
        transmission: u64,
    },
    /// The run's end.
    End,
}

/// Where an item waits: its time, its push order (unique), and its slot in the slab.
type Key = (Time, u64, u32);

/// A min-queue of items by `(time, push order)`.
#[derive(Default)]
pub struct Queue {
    heap: QuaternaryHeap<Reverse<Key>>,
    /// Keys at `now`, in push order.
    current: VecDeque<Key>,
    /// The time of the item last taken.
    now: Time,
    slab: Vec<Option<Item>>,
    free: Vec<u32>,
    seq: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("len", &self.len()).field("pushed", &self.seq).finish()
    }
}

impl Queue {
    /// Schedules `item` at `at`.
    pub fn push(&mut self, at: Time, item: Item) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(item);
                slot
            }
            None => {
                // A run holds far fewer than 4 billion items at once.
                let slot = u32::try_from(self.slab.len()).expect("fewer than 2^32 pending items");
                self.slab.push(Some(item));
                slot
            }
        };
        let key = (at, self.seq, slot);
        self.seq += 1;
        if at == self.now {
            self.current.push_back(key);
        } else {
            self.heap.push(Reverse(key));
        }
    }

    /// The time of the earliest item.
    pub fn peek_time(&self) -> Option<Time> {
        self.peek_key().map(|(at, _, _)| at)
    }

    /// Takes the earliest item.
    pub fn pop(&mut self) -> Option<(Time, Item)> {
        let key = self.peek_key()?;
        if self.current.front() == Some(&key) {
            self.current.pop_front();
        } else {
            self.heap.pop();
            if key.0 != self.now {
                self.move_to(key.0);
            }
        }
        let (at, _, slot) = key;
        self.free.push(slot);
        // Every key names a filled slot: a slot is emptied only here, when its key leaves.
        let item = self.slab[slot as usize].take().expect("a queued key names a filled slot");
        Some((at, item))
    }

    /// Items pushed so far (the number of events a run has processed or will process).
    pub fn pushed(&self) -> u64 {
        self.seq
    }

    fn len(&self) -> usize {
        self.heap.len() + self.current.len()
    }

    fn peek_key(&self) -> Option<Key> {
        match (self.heap.peek(), self.current.front()) {
            (Some(Reverse(h)), Some(c)) => Some(*h.min(c)),
            (Some(Reverse(h)), None) => Some(*h),
            (None, c) => c.copied(),
        }
    }

    /// The current time becomes `at`; keys left at the old time (only when something was
    /// pushed into the past) go back to the heap, so the FIFO holds one time only.
    fn move_to(&mut self, at: Time) {
        self.now = at;
        for key in self.current.drain(..) {
            self.heap.push(Reverse(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(q: &mut Queue) -> Vec<usize> {
        std::iter::from_fn(|| q.pop())
            .map(|(_, item)| match item {
                Item::Action(n) => n,
                _ => unreachable!("only actions were pushed"),
            })
            .collect()
    }

    #[test]
    fn ties_come_out_in_push_order() {
        let mut q = Queue::default();
        q.push(Time::from_millis(5), Item::Action(1));
        q.push(Time::from_millis(1), Item::Action(2));
        q.push(Time::from_millis(5), Item::Action(3));
        assert_eq!(actions(&mut q), [2, 1, 3]);
    }

    #[test]
    fn items_pushed_for_now_follow_earlier_ones_for_now_and_precede_later_times() {
        let mut q = Queue::default();
        q.push(Time::from_millis(1), Item::Action(1));
        q.push(Time::from_millis(2), Item::Action(2));
        q.push(Time::from_millis(1), Item::Action(3));
        let (at, _) = q.pop().expect("three pushed");
        assert_eq!(at, Time::from_millis(1));
        q.push(Time::from_millis(1), Item::Action(4));
        q.push(Time::from_millis(0), Item::Action(5));
        q.push(Time::from_millis(1), Item::Action(6));
        assert_eq!(actions(&mut q), [5, 3, 4, 6, 2]);
    }
}
