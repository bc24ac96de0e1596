//! `Bitfield`: one bit per chunk, the unit of "who has what".
//!
//! The tracker keeps one per (file, peer) and peers send them to each other, so the memory and
//! wire cost of "holds chunks 0..n" is n bits.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::ChunkIndex;

/// A set of chunks of a file with `len` chunks, one bit each. Bits past `len` are always zero.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bitfield {
    len: u32,
    bytes: Vec<u8>,
}

impl Bitfield {
    /// The empty set over `len` chunks.
    pub fn new(len: u32) -> Bitfield {
        Bitfield { len, bytes: vec![0; Self::bytes_for(len)] }
    }

    /// The full set over `len` chunks.
    pub fn full(len: u32) -> Bitfield {
        let mut field = Bitfield { len, bytes: vec![0xff; Self::bytes_for(len)] };
        field.clear_tail();
        field
    }

    /// Rebuilds a bitfield from its packed bytes (most significant bit first). Returns `None`
    /// when the byte count does not match `len`; stray bits past `len` are cleared.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Bitfield> {
        if bytes.len() != Self::bytes_for(len) {
            return None;
        }
        let mut field = Bitfield { len, bytes: bytes.to_vec() };
        field.clear_tail();
        Some(field)
    }

    /// The packed bytes, most significant bit first.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of chunks the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the set ranges over no chunks at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `chunk` is in the set (false when out of range).
    pub fn has(&self, chunk: ChunkIndex) -> bool {
        chunk.0 < self.len && self.bytes[chunk.as_usize() / 8] & Self::mask(chunk) != 0
    }

    /// Adds `chunk`; returns whether it was new. Out-of-range chunks are ignored.
    pub fn set(&mut self, chunk: ChunkIndex) -> bool {
        if chunk.0 >= self.len || self.has(chunk) {
            return false;
        }
        self.bytes[chunk.as_usize() / 8] |= Self::mask(chunk);
        true
    }

    /// Removes `chunk`; returns whether it was present.
    pub fn unset(&mut self, chunk: ChunkIndex) -> bool {
        if !self.has(chunk) {
            return false;
        }
        self.bytes[chunk.as_usize() / 8] &= !Self::mask(chunk);
        true
    }

    /// Number of chunks in the set.
    pub fn count(&self) -> u32 {
        // Eight bytes at a time: a count per byte costs as much as one per word.
        let words = self.bytes.chunks_exact(8);
        let tail: u32 = words.remainder().iter().map(|b| b.count_ones()).sum();
        let word = |chunk: &[u8]| chunk.iter().fold(0u64, |word, b| word << 8 | u64::from(*b));
        tail + words.map(|chunk| word(chunk).count_ones()).sum::<u32>()
    }

    /// True when every chunk is in the set: every whole byte full, and the last one's bits up
    /// to `len` (those past it are zero). Stops at the first byte that lacks a chunk.
    pub fn is_full(&self) -> bool {
        let (whole, tail) = self.bytes.split_at(self.len as usize / 8);
        whole.iter().all(|b| *b == 0xff) && tail.iter().all(|b| b.count_ones() == self.len % 8)
    }

    /// True when any chunk is in the set.
    pub fn any(&self) -> bool {
        self.bytes.iter().any(|b| *b != 0)
    }

    /// The chunks in the set, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = ChunkIndex> + '_ {
        self.iter_combined(self, |mine, _| mine)
    }

    /// The groups of `per_group` consecutive chunks (the last group may be shorter) whose every
    /// chunk is in the set, by group index in ascending order: the pieces held whole, when the
    /// set is over a file's chunks and a piece is `per_group` chunks.
    pub fn whole_groups(&self, per_group: u32) -> impl Iterator<Item = u32> + '_ {
        let per_group = per_group.max(1);
        (0..self.len.div_ceil(per_group)).filter(move |group| {
            let first = group * per_group;
            (first..(first + per_group).min(self.len)).all(|chunk| self.has(ChunkIndex(chunk)))
        })
    }

    /// The chunks not in the set, in ascending order.
    pub fn iter_missing(&self) -> impl Iterator<Item = ChunkIndex> + '_ {
        (0..self.len).map(ChunkIndex).filter(|p| !self.has(*p))
    }

    /// The chunks in this set and not in `other`, in ascending order; words of 64 chunks with
    /// nothing to offer are skipped, so a scan over a nearly complete download costs little.
    pub fn iter_and_not<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = ChunkIndex> + 'a {
        self.iter_combined(other, |mine, theirs| mine & !theirs)
    }

    /// The chunks in this set and in `other`, in ascending order (empty words skipped as in
    /// [`Bitfield::iter_and_not`]).
    pub fn iter_and<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = ChunkIndex> + 'a {
        self.iter_combined(other, |mine, theirs| mine & theirs)
    }

    /// Number of chunks in this set and in both `b` and `c`, counted 64 at a time.
    pub fn count_and_and(&self, b: &Bitfield, c: &Bitfield) -> u32 {
        (0..self.words()).map(|at| Self::and_and(self, b, c, at).count_ones()).sum()
    }

    /// The `n`th chunk (from 0, in ascending order) in this set and in both `b` and `c`, found
    /// by counting 64 chunks at a time.
    pub fn nth_and_and(&self, b: &Bitfield, c: &Bitfield, mut n: u32) -> Option<ChunkIndex> {
        for at in 0..self.words() {
            let mut word = Self::and_and(self, b, c, at);
            let ones = word.count_ones();
            if n >= ones {
                n -= ones;
                continue;
            }
            for _ in 0..n {
                word &= !((1 << 63) >> word.leading_zeros());
            }
            return Some(ChunkIndex(at as u32 * 64 + word.leading_zeros()));
        }
        None
    }

    /// Words of 64 chunks in the set's range.
    fn words(&self) -> usize {
        self.bytes.len().div_ceil(8)
    }

    /// Word `at` of `a`, `b` and `c` combined with `&` (a shorter set counts as empty past its
    /// end).
    fn and_and(a: &Bitfield, b: &Bitfield, c: &Bitfield, at: usize) -> u64 {
        Self::word(&a.bytes, at) & Self::word(&b.bytes, at) & Self::word(&c.bytes, at)
    }

    /// The chunks whose bit is set in `combine(word of self, word of other)`, 64 chunks a
    /// word, in ascending order; `other` counts as empty past its end.
    fn iter_combined<'a>(
        &'a self,
        other: &'a Bitfield,
        combine: impl Fn(u64, u64) -> u64 + 'a,
    ) -> impl Iterator<Item = ChunkIndex> + 'a {
        (0..self.words()).flat_map(move |at| {
            let mut left = combine(Self::word(&self.bytes, at), Self::word(&other.bytes, at));
            std::iter::from_fn(move || {
                let bit = (left != 0).then(|| left.leading_zeros())?;
                left &= !((1 << 63) >> bit);
                Some(ChunkIndex(at as u32 * 64 + bit))
            })
        })
    }

    /// Chunks `64 × at` to `64 × at + 63` of `bytes`, the first in the most significant bit;
    /// zero past the end.
    fn word(bytes: &[u8], at: usize) -> u64 {
        // Every word but a short last one is read whole, without the copy into a zeroed buffer.
        if let Some(whole) = bytes.get(at * 8..at * 8 + 8).and_then(|chunk| <[u8; 8]>::try_from(chunk).ok()) {
            return u64::from_be_bytes(whole);
        }
        let chunk = bytes.get(at * 8..).unwrap_or_default();
        let chunk = &chunk[..chunk.len().min(8)];
        let mut word = [0; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        u64::from_be_bytes(word)
    }

    /// Bytes of the packed form of a set over `len` chunks.
    pub(crate) fn bytes_for(len: u32) -> usize {
        (len as usize).div_ceil(8)
    }

    fn mask(chunk: ChunkIndex) -> u8 {
        0x80 >> (chunk.0 % 8)
    }

    fn clear_tail(&mut self) {
        let used = self.len % 8;
        if used != 0 {
            if let Some(last) = self.bytes.last_mut() {
                *last &= 0xffu8 << (8 - used);
            }
        }
    }
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{}: ", self.count(), self.len)?;
        for chunk in (0..self.len.min(64)).map(ChunkIndex) {
            f.write_str(if self.has(chunk) { "1" } else { "0" })?;
        }
        f.write_str(if self.len > 64 { "…)" } else { ")" })
    }
}

/// On the wire: `[len, bytes]`, with the byte count checked against `len` on decode.
impl Serialize for Bitfield {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.len, serde_bytes::Bytes::new(&self.bytes)).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Bitfield {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (len, bytes): (u32, serde_bytes::ByteBuf) = Deserialize::deserialize(deserializer)?;
        if len > crate::limits::CHUNKS_MAX {
            return Err(serde::de::Error::custom("bitfield longer than the chunk limit"));
        }
        Bitfield::from_bytes(len, &bytes)
            .ok_or_else(|| serde::de::Error::custom("bitfield byte count does not match its length"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn whole_groups_count_a_short_last_group_whole_when_it_is() {
        let mut set = Bitfield::new(10);
        for chunk in [0, 1, 2, 3, 5, 8, 9] {
            set.set(ChunkIndex(chunk));
        }
        assert_eq!(set.whole_groups(4).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(set.whole_groups(1).count(), 7);
        assert_eq!(Bitfield::new(0).whole_groups(4).count(), 0);
    }

    proptest! {
        #[test]
        fn three_way_counts_and_picks_match_a_walk_of_every_chunk(
            len in 1u32..300,
            seeds in prop::array::uniform3(any::<u64>()),
        ) {
            let set = |seed: u64| {
                let mut field = Bitfield::new(len);
                for chunk in (0..len).filter(|p| !(seed.rotate_left(*p % 64) ^ u64::from(*p)).is_multiple_of(3)) {
                    field.set(ChunkIndex(chunk));
                }
                field
            };
            let (a, b, c) = (set(seeds[0]), set(seeds[1]), set(seeds[2]));
            let both: Vec<ChunkIndex> =
                (0..len).map(ChunkIndex).filter(|p| a.has(*p) && b.has(*p) && c.has(*p)).collect();
            prop_assert_eq!(a.count_and_and(&b, &c) as usize, both.len());
            for (n, chunk) in both.iter().enumerate() {
                prop_assert_eq!(a.nth_and_and(&b, &c, n as u32), Some(*chunk));
            }
            prop_assert_eq!(a.nth_and_and(&b, &c, both.len() as u32), None);
        }
    }

    #[test]
    fn chunks_in_one_set_and_not_the_other_come_in_order() {
        let mine = Bitfield::from_bytes(20, &[0b1011_0000, 0xff, 0b1111_0000]).expect("3 bytes for 20 chunks");
        let theirs = Bitfield::from_bytes(20, &[0b0010_0000, 0b0111_1111, 0]).expect("3 bytes for 20 chunks");
        let only_mine: Vec<u32> = mine.iter_and_not(&theirs).map(|p| p.0).collect();
        assert_eq!(only_mine, vec![0, 3, 8, 16, 17, 18, 19]);
        let expected: Vec<ChunkIndex> = mine.iter().filter(|p| !theirs.has(*p)).collect();
        assert_eq!(mine.iter_and_not(&theirs).collect::<Vec<_>>(), expected);
        assert_eq!(mine.iter_and_not(&Bitfield::new(0)).count() as u32, mine.count(), "a shorter other lacks all");
        let both: Vec<u32> = mine.iter_and(&theirs).map(|p| p.0).collect();
        assert_eq!(both, vec![2, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(mine.iter_and(&Bitfield::new(0)).count(), 0, "a shorter other holds nothing past its end");
    }

    #[test]
    fn set_count_and_iterate() {
        let mut field = Bitfield::new(10);
        assert!(field.set(ChunkIndex(0)));
        assert!(field.set(ChunkIndex(9)));
        assert!(!field.set(ChunkIndex(9)), "second set is not new");
        assert!(!field.set(ChunkIndex(10)), "out of range is ignored");
        assert_eq!(field.count(), 2);
        assert_eq!(field.iter().collect::<Vec<_>>(), vec![ChunkIndex(0), ChunkIndex(9)]);
        assert_eq!(field.iter_missing().count(), 8);
        assert!(field.unset(ChunkIndex(0)));
        assert!(!field.has(ChunkIndex(0)));
    }

    #[test]
    fn full_has_no_stray_tail_bits() {
        let field = Bitfield::full(11);
        assert_eq!(field.count(), 11);
        assert!(field.is_full());
        assert!(field.any());
        assert!(!Bitfield::new(11).any());
        let mut gap = Bitfield::full(11);
        gap.unset(ChunkIndex(10));
        assert!(!gap.is_full(), "the last byte lacks a chunk");
        gap.set(ChunkIndex(10));
        gap.unset(ChunkIndex(3));
        assert!(!gap.is_full(), "a whole byte lacks a chunk");
        assert!(Bitfield::full(16).is_full() && Bitfield::new(0).is_full());
        assert_eq!(field.as_bytes(), &[0xff, 0xe0]);
        let cleaned = Bitfield::from_bytes(11, &[0xff, 0xff]).expect("two bytes for 11 bits");
        assert_eq!(cleaned, field);
        assert!(Bitfield::from_bytes(11, &[0xff]).is_none());
    }
}
