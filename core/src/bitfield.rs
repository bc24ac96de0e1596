//! `Bitfield`: one bit per piece, the unit of "who has what".
//!
//! The tracker keeps one per (file, peer) and peers send them to each other, so the memory and
//! wire cost of "holds pieces 0..n" is n bits.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::PieceIndex;

/// A set of pieces of a file with `len` pieces, one bit each. Bits past `len` are always zero.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bitfield {
    len: u32,
    bytes: Vec<u8>,
}

impl Bitfield {
    /// The empty set over `len` pieces.
    pub fn new(len: u32) -> Bitfield {
        Bitfield { len, bytes: vec![0; Self::bytes_for(len)] }
    }

    /// The full set over `len` pieces.
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

    /// Number of pieces the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the set ranges over no pieces at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `piece` is in the set (false when out of range).
    pub fn has(&self, piece: PieceIndex) -> bool {
        piece.0 < self.len && self.bytes[piece.as_usize() / 8] & Self::mask(piece) != 0
    }

    /// Adds `piece`; returns whether it was new. Out-of-range pieces are ignored.
    pub fn set(&mut self, piece: PieceIndex) -> bool {
        if piece.0 >= self.len || self.has(piece) {
            return false;
        }
        self.bytes[piece.as_usize() / 8] |= Self::mask(piece);
        true
    }

    /// Removes `piece`; returns whether it was present.
    pub fn unset(&mut self, piece: PieceIndex) -> bool {
        if !self.has(piece) {
            return false;
        }
        self.bytes[piece.as_usize() / 8] &= !Self::mask(piece);
        true
    }

    /// Number of pieces in the set.
    pub fn count(&self) -> u32 {
        // Eight bytes at a time: a count per byte costs as much as one per word.
        let words = self.bytes.chunks_exact(8);
        let tail: u32 = words.remainder().iter().map(|b| b.count_ones()).sum();
        let word = |chunk: &[u8]| chunk.iter().fold(0u64, |word, b| word << 8 | u64::from(*b));
        tail + words.map(|chunk| word(chunk).count_ones()).sum::<u32>()
    }

    /// True when every piece is in the set: every whole byte full, and the last one's bits up
    /// to `len` (those past it are zero). Stops at the first byte that lacks a piece.
    pub fn is_full(&self) -> bool {
        let (whole, tail) = self.bytes.split_at(self.len as usize / 8);
        whole.iter().all(|b| *b == 0xff) && tail.iter().all(|b| b.count_ones() == self.len % 8)
    }

    /// True when any piece is in the set.
    pub fn any(&self) -> bool {
        self.bytes.iter().any(|b| *b != 0)
    }

    /// The pieces in the set, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        self.iter_combined(self, |mine, _| mine)
    }

    /// The pieces not in the set, in ascending order.
    pub fn iter_missing(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        (0..self.len).map(PieceIndex).filter(|p| !self.has(*p))
    }

    /// The pieces in this set and not in `other`, in ascending order; words of 64 pieces with
    /// nothing to offer are skipped, so a scan over a nearly complete download costs little.
    pub fn iter_and_not<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = PieceIndex> + 'a {
        self.iter_combined(other, |mine, theirs| mine & !theirs)
    }

    /// The pieces in this set and in `other`, in ascending order (empty words skipped as in
    /// [`Bitfield::iter_and_not`]).
    pub fn iter_and<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = PieceIndex> + 'a {
        self.iter_combined(other, |mine, theirs| mine & theirs)
    }

    /// Number of pieces in this set and in both `b` and `c`, counted 64 at a time.
    pub fn count_and_and(&self, b: &Bitfield, c: &Bitfield) -> u32 {
        (0..self.words()).map(|at| Self::and_and(self, b, c, at).count_ones()).sum()
    }

    /// The `n`th piece (from 0, in ascending order) in this set and in both `b` and `c`, found
    /// by counting 64 pieces at a time.
    pub fn nth_and_and(&self, b: &Bitfield, c: &Bitfield, mut n: u32) -> Option<PieceIndex> {
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
            return Some(PieceIndex(at as u32 * 64 + word.leading_zeros()));
        }
        None
    }

    /// Words of 64 pieces in the set's range.
    fn words(&self) -> usize {
        self.bytes.len().div_ceil(8)
    }

    /// Word `at` of `a`, `b` and `c` combined with `&` (a shorter set counts as empty past its
    /// end).
    fn and_and(a: &Bitfield, b: &Bitfield, c: &Bitfield, at: usize) -> u64 {
        Self::word(&a.bytes, at) & Self::word(&b.bytes, at) & Self::word(&c.bytes, at)
    }

    /// The pieces whose bit is set in `combine(word of self, word of other)`, 64 pieces a
    /// word, in ascending order; `other` counts as empty past its end.
    fn iter_combined<'a>(
        &'a self,
        other: &'a Bitfield,
        combine: impl Fn(u64, u64) -> u64 + 'a,
    ) -> impl Iterator<Item = PieceIndex> + 'a {
        (0..self.words()).flat_map(move |at| {
            let mut left = combine(Self::word(&self.bytes, at), Self::word(&other.bytes, at));
            std::iter::from_fn(move || {
                let bit = (left != 0).then(|| left.leading_zeros())?;
                left &= !((1 << 63) >> bit);
                Some(PieceIndex(at as u32 * 64 + bit))
            })
        })
    }

    /// Pieces `64 × at` to `64 × at + 63` of `bytes`, the first in the most significant bit;
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

    /// Bytes of the packed form of a set over `len` pieces.
    pub(crate) fn bytes_for(len: u32) -> usize {
        (len as usize).div_ceil(8)
    }

    fn mask(piece: PieceIndex) -> u8 {
        0x80 >> (piece.0 % 8)
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
        for piece in (0..self.len.min(64)).map(PieceIndex) {
            f.write_str(if self.has(piece) { "1" } else { "0" })?;
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
        if len > crate::limits::PIECES_MAX {
            return Err(serde::de::Error::custom("bitfield longer than the piece limit"));
        }
        Bitfield::from_bytes(len, &bytes)
            .ok_or_else(|| serde::de::Error::custom("bitfield byte count does not match its length"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn three_way_counts_and_picks_match_a_walk_of_every_piece(
            len in 1u32..300,
            seeds in prop::array::uniform3(any::<u64>()),
        ) {
            let set = |seed: u64| {
                let mut field = Bitfield::new(len);
                for piece in (0..len).filter(|p| !(seed.rotate_left(*p % 64) ^ u64::from(*p)).is_multiple_of(3)) {
                    field.set(PieceIndex(piece));
                }
                field
            };
            let (a, b, c) = (set(seeds[0]), set(seeds[1]), set(seeds[2]));
            let both: Vec<PieceIndex> =
                (0..len).map(PieceIndex).filter(|p| a.has(*p) && b.has(*p) && c.has(*p)).collect();
            prop_assert_eq!(a.count_and_and(&b, &c) as usize, both.len());
            for (n, piece) in both.iter().enumerate() {
                prop_assert_eq!(a.nth_and_and(&b, &c, n as u32), Some(*piece));
            }
            prop_assert_eq!(a.nth_and_and(&b, &c, both.len() as u32), None);
        }
    }

    #[test]
    fn pieces_in_one_set_and_not_the_other_come_in_order() {
        let mine = Bitfield::from_bytes(20, &[0b1011_0000, 0xff, 0b1111_0000]).expect("3 bytes for 20 pieces");
        let theirs = Bitfield::from_bytes(20, &[0b0010_0000, 0b0111_1111, 0]).expect("3 bytes for 20 pieces");
        let only_mine: Vec<u32> = mine.iter_and_not(&theirs).map(|p| p.0).collect();
        assert_eq!(only_mine, vec![0, 3, 8, 16, 17, 18, 19]);
        let expected: Vec<PieceIndex> = mine.iter().filter(|p| !theirs.has(*p)).collect();
        assert_eq!(mine.iter_and_not(&theirs).collect::<Vec<_>>(), expected);
        assert_eq!(mine.iter_and_not(&Bitfield::new(0)).count() as u32, mine.count(), "a shorter other lacks all");
        let both: Vec<u32> = mine.iter_and(&theirs).map(|p| p.0).collect();
        assert_eq!(both, vec![2, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(mine.iter_and(&Bitfield::new(0)).count(), 0, "a shorter other holds nothing past its end");
    }

    #[test]
    fn set_count_and_iterate() {
        let mut field = Bitfield::new(10);
        assert!(field.set(PieceIndex(0)));
        assert!(field.set(PieceIndex(9)));
        assert!(!field.set(PieceIndex(9)), "second set is not new");
        assert!(!field.set(PieceIndex(10)), "out of range is ignored");
        assert_eq!(field.count(), 2);
        assert_eq!(field.iter().collect::<Vec<_>>(), vec![PieceIndex(0), PieceIndex(9)]);
        assert_eq!(field.iter_missing().count(), 8);
        assert!(field.unset(PieceIndex(0)));
        assert!(!field.has(PieceIndex(0)));
    }

    #[test]
    fn full_has_no_stray_tail_bits() {
        let field = Bitfield::full(11);
        assert_eq!(field.count(), 11);
        assert!(field.is_full());
        assert!(field.any());
        assert!(!Bitfield::new(11).any());
        let mut gap = Bitfield::full(11);
        gap.unset(PieceIndex(10));
        assert!(!gap.is_full(), "the last byte lacks a piece");
        gap.set(PieceIndex(10));
        gap.unset(PieceIndex(3));
        assert!(!gap.is_full(), "a whole byte lacks a piece");
        assert!(Bitfield::full(16).is_full() && Bitfield::new(0).is_full());
        assert_eq!(field.as_bytes(), &[0xff, 0xe0]);
        let cleaned = Bitfield::from_bytes(11, &[0xff, 0xff]).expect("two bytes for 11 bits");
        assert_eq!(cleaned, field);
        assert!(Bitfield::from_bytes(11, &[0xff]).is_none());
    }
}
