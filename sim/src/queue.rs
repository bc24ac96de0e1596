//! The one central event queue: every future happening of a run — a scenario action, a machine's
//! timer, a message or connection event arriving over a link, a storage completion — is an
//! [`Item`] at a virtual [`Time`].
//!
//! Items come out in `(time, push order)` order: a global sequence number breaks ties, so the
//! order of a run depends only on what was pushed, never on the queue's internal layout.
//!
//! Layout, for speed at scale: items live in a slab, and small `(time, sequence, slot)` keys wait
//! in a radix heap, so no item is boxed or moved while it waits. An uplink wake-up, the commonest
//! item, is kept in its key instead (node and wake-up number in the slot's place): it never touches
//! the slab, whose slot would be out of the cache by the time it is taken. A run's keys only grow:
//! each is pushed at or after the time of the key last taken, with a sequence number above every
//! earlier one. A radix heap uses that: a key waits in the bucket named by the highest bit in which
//! it differs from the key last taken, and a pop empties only the lowest non-empty bucket into
//! lower ones. Each key moves a few times, always appended to or read in order from a short vector,
//! where a comparison heap of hundreds of thousands of keys misses the cache at every level of
//! every pop (the scale benchmark's figures are in BENCHMARKS.md). A key pushed into the past (only
//! tests do) waits in a small ordinary heap beside it, and `pop` takes whichever of the two comes
//! first: the same order one heap would give.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

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
        transmission: u32,
    },
    /// The run's end.
    End,
}

/// Where an item waits: its time, its push order (unique), and what it is: a slot in the slab,
/// or an uplink wake-up ([`WAKE`] set on its node, and its number).
type Key = (Time, u64, u32, u32);

/// Marks a key's node as an uplink wake-up's (slots and nodes stay below it).
const WAKE: u32 = 1 << 31;

/// A bucket for each highest differing bit of the 128-bit `(time, sequence)` order, and one
/// for the key last taken.
const BUCKETS: usize = 129;

/// A key's order as one number: the time above the sequence number.
fn order((at, seq, _, _): Key) -> u128 {
    (u128::from(at.as_micros()) << 64) | u128::from(seq)
}

/// A min-queue of items by `(time, push order)`.
pub struct Queue {
    /// `buckets[b]` holds keys whose order first differs from `last`'s at bit `b - 1` (counted
    /// from the lowest), `buckets[0]` the key equal to it; bit `b` of `filled` tells whether
    /// `buckets[b]` has any.
    buckets: Vec<Vec<Key>>,
    filled: [u64; 3],
    /// The order of the key last moved into `buckets[0]`: no key in the buckets is below it.
    last: u128,
    /// Keys pushed below `last`, in an ordinary heap.
    past: BinaryHeap<Reverse<Key>>,
    len: usize,
    slab: Vec<Option<Item>>,
    free: Vec<u32>,
    seq: u64,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            filled: [0; 3],
            last: 0,
            past: BinaryHeap::new(),
            len: 0,
            slab: Vec::new(),
            free: Vec::new(),
            seq: 0,
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("len", &self.len).field("pushed", &self.seq).finish()
    }
}

impl Queue {
    /// Schedules `item` at `at`.
    pub fn push(&mut self, at: Time, item: Item) {
        let (what, wake) = match item {
            Item::UplinkDone { node, transmission } if node.0 < WAKE as usize => (node.0 as u32 | WAKE, transmission),
            item => (self.put(item), 0),
        };
        let key = (at, self.seq, what, wake);
        self.seq += 1;
        self.len += 1;
        if order(key) < self.last {
            self.past.push(Reverse(key));
        } else {
            self.file(key);
        }
    }

    /// Keeps `item` in the slab; returns its slot.
    fn put(&mut self, item: Item) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(item);
                slot
            }
            None => {
                // A run holds far fewer than 2 billion items at once.
                let slot = u32::try_from(self.slab.len()).ok().filter(|slot| *slot < WAKE);
                let slot = slot.expect("fewer than 2^31 pending items");
                self.slab.push(Some(item));
                slot
            }
        }
    }

    /// The time of the earliest item.
    pub fn peek_time(&mut self) -> Option<Time> {
        self.peek_key().map(|(at, _, _, _)| at)
    }

    /// Takes the earliest item.
    pub fn pop(&mut self) -> Option<(Time, Item)> {
        let key = self.peek_key()?;
        if self.past.peek().is_some_and(|Reverse(p)| *p == key) {
            self.past.pop();
        } else {
            self.buckets[0].clear();
            self.filled[0] &= !1;
        }
        self.len -= 1;
        let (at, _, what, wake) = key;
        if what & WAKE != 0 {
            return Some((at, Item::UplinkDone { node: NodeIdx((what & !WAKE) as usize), transmission: wake }));
        }
        let slot = what;
        self.free.push(slot);
        // Every key names a filled slot: a slot is emptied only here, when its key leaves.
        let item = self.slab[slot as usize].take().expect("a queued key names a filled slot");
        Some((at, item))
    }

    /// Items pushed so far (the number of events a run has processed or will process).
    pub fn pushed(&self) -> u64 {
        self.seq
    }

    /// Puts `key` (not below `last`) in its bucket.
    fn file(&mut self, key: Key) {
        let bucket = (128 - (order(key) ^ self.last).leading_zeros()) as usize;
        self.buckets[bucket].push(key);
        self.filled[bucket / 64] |= 1 << (bucket % 64);
    }

    /// The earliest key, which (unless it waits in `past`) is then alone in `buckets[0]`.
    fn peek_key(&mut self) -> Option<Key> {
        if self.filled[0] & 1 == 0 {
            self.refill();
        }
        let radix = self.buckets[0].first().copied();
        match (radix, self.past.peek()) {
            (Some(r), Some(Reverse(p))) => Some(r.min(*p)),
            (r, p) => r.or(p.map(|Reverse(p)| *p)),
        }
    }

    /// Empties the lowest non-empty bucket: its least key becomes `last` and goes to
    /// `buckets[0]`, the others to buckets below the one they came from.
    fn refill(&mut self) {
        let Some(word) = self.filled.iter().position(|w| *w != 0) else {
            return;
        };
        let bucket = word * 64 + self.filled[word].trailing_zeros() as usize;
        let keys = std::mem::take(&mut self.buckets[bucket]);
        self.filled[word] &= !(1 << (bucket % 64));
        // The bucket was marked filled, so it has a least key.
        let least = keys.iter().map(|k| order(*k)).min().expect("a filled bucket has keys");
        self.last = least;
        for key in &keys {
            self.file(*key);
        }
        // Every key went to a lower bucket (each shares `least`'s bits above `bucket - 1`): the
        // emptied vector goes back, keeping its room for the next keys of that bucket.
        let mut keys = keys;
        keys.clear();
        self.buckets[bucket] = keys;
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

    #[test]
    fn interleaved_pushes_and_pops_come_out_as_a_sorted_set_would() {
        let mut rng = p2p_core::rng::Rng::from_seed(7);
        let (mut q, mut sorted) = (Queue::default(), std::collections::BTreeSet::new());
        let mut now = 0;
        for n in 0..20_000 {
            if rng.below(3) > 0 {
                // Mostly at or after now, sometimes far ahead, now and then into the past.
                let at = match rng.below(20) {
                    0 => now / 2,
                    1 => now + 1_000_000 + rng.below(1 << 30) as u64,
                    _ => now + rng.below(50_000) as u64,
                };
                q.push(Time::from_micros(at), Item::Action(n));
                sorted.insert((at, n));
            } else {
                let taken = q.pop().map(|(at, item)| match item {
                    Item::Action(n) => (at.as_micros(), n),
                    _ => unreachable!("only actions were pushed"),
                });
                assert_eq!(taken, sorted.pop_first());
                now = taken.map_or(now, |(at, _)| at);
            }
        }
        let rest: Vec<(u64, usize)> = std::iter::from_fn(|| q.pop())
            .map(|(at, item)| match item {
                Item::Action(n) => (at.as_micros(), n),
                _ => unreachable!("only actions were pushed"),
            })
            .collect();
        assert_eq!(rest, sorted.into_iter().collect::<Vec<_>>());
    }
}
