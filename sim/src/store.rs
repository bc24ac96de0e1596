//! In-memory piece stores: the simulated disk of each peer, holding real bytes.
//!
//! [`Content`] is the scenario's file: bytes generated from the seed and their manifest. Each
//! peer has a [`Store`] that survives crashes (a restarted peer resumes from it). Blocks are
//! kept as `Bytes` slices, so serving a piece never copies it; a piece whose blocks are the very
//! slices of the original file has the original's digest, which is then known without hashing
//! (the same memory holds the same bytes). Anything else — a corrupted copy — is hashed for real.
//!
//! The store also checks two invariants of a run for the world: a piece recorded as verified
//! must equal the original, and only verified pieces may be read for a remote.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use p2p_core::rng::Rng;
use p2p_core::{Bitfield, Digest, Manifest, ManifestBuilder, PieceIndex};

/// The shared file: its bytes and manifest.
#[derive(Debug)]
pub struct Content {
    /// The whole file.
    pub bytes: Bytes,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Content {
    /// `size_bytes` of seeded random bytes named `name`, cut into pieces of `piece_size_bytes`.
    pub fn generate(seed: u64, name: &str, size_bytes: u64, piece_size_bytes: u32) -> Content {
        let mut rng = Rng::from_seed(Rng::derive_seed(seed, "file"));
        // Scenario validation bounds the size by PIECES_MAX pieces of at most 16 MiB.
        let mut bytes = vec![0u8; usize::try_from(size_bytes).expect("file size fits in memory")];
        rng.fill(&mut bytes);
        // The name and piece size were validated with the scenario.
        let mut builder = ManifestBuilder::new(name.to_owned(), piece_size_bytes).expect("validated name and size");
        builder.update(&bytes);
        let manifest = builder.finish().expect("validated piece count");
        Content { bytes: Bytes::from(bytes), manifest }
    }

    /// The original bytes of `piece`.
    pub fn piece(&self, piece: u32) -> Bytes {
        let index = PieceIndex(piece);
        // Offsets and lengths come from the manifest of these very bytes.
        let start = self.manifest.piece_offset(index) as usize;
        self.bytes.slice(start..start + self.manifest.piece_len(index) as usize)
    }
}

/// One peer's simulated disk for the scenario's file.
#[derive(Debug, Default)]
pub struct Store {
    /// Blocks by piece (indexed, grown on demand; no blocks is a piece not stored), each piece's
    /// in offset order. A piece usually is one block, so a short vector beats a map here: ten
    /// thousand peers of a scale run hold millions of them.
    blocks: Vec<Blocks>,
    /// Verified pieces, by index (grown on demand).
    verified: Vec<bool>,
    corrupt: BTreeSet<u32>,
    allocated: bool,
    finalized: bool,
}

/// One piece's blocks: `(offset within the piece, bytes)`, sorted by offset, offsets unique.
type Blocks = Vec<(u32, Bytes)>;

/// A broken invariant found by a store, for the run's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreViolation {
    /// A piece was recorded as verified but differs from the original.
    BadPieceVerified(u32),
    /// A piece was read for a remote before it was verified.
    UnverifiedRead(u32),
    /// The file was finalized with a piece missing or different from the original.
    BadFinalFile,
}

impl Store {
    /// A store that already holds these original pieces, verified.
    pub fn seeded(content: &Content, pieces: impl IntoIterator<Item = u32>) -> Store {
        let mut store = Store::default();
        for piece in pieces {
            *store.blocks_mut(piece) = vec![(0, content.piece(piece))];
            store.set_verified(piece);
        }
        store
    }

    /// The verified pieces, as a bitfield of the manifest's length.
    pub fn verified(&self, content: &Content) -> Bitfield {
        let mut have = Bitfield::new(content.manifest.piece_count());
        for (piece, _) in self.verified.iter().enumerate().filter(|(_, verified)| **verified) {
            have.set(PieceIndex(piece as u32));
        }
        have
    }

    /// Whether a download was started here (its manifest kept).
    pub fn is_allocated(&self) -> bool {
        self.allocated
    }

    /// Whether the file was finalized here.
    pub fn is_finalized(&self) -> bool {
        self.finalized
    }

    /// Keeps the manifest of a download.
    pub fn allocate(&mut self) {
        self.allocated = true;
    }

    /// Writes a received block.
    pub fn write(&mut self, piece: u32, offset: u32, bytes: Bytes) {
        if self.is_verified(piece) {
            return;
        }
        let blocks = self.blocks_mut(piece);
        if blocks.is_empty() {
            // Most pieces are one block: room for exactly one, not the default four.
            blocks.reserve_exact(1);
        }
        match blocks.binary_search_by_key(&offset, |(start, _)| *start) {
            Ok(at) => blocks[at].1 = bytes,
            Err(at) => blocks.insert(at, (offset, bytes)),
        }
    }

    fn is_verified(&self, piece: u32) -> bool {
        self.verified.get(piece as usize).copied().unwrap_or(false)
    }

    fn set_verified(&mut self, piece: u32) {
        let index = piece as usize;
        if self.verified.len() <= index {
            self.verified.resize(index + 1, false);
        }
        self.verified[index] = true;
    }

    /// The stored blocks of `piece`, if any.
    fn blocks(&self, piece: u32) -> Option<&Blocks> {
        self.blocks.get(piece as usize).filter(|blocks| !blocks.is_empty())
    }

    fn blocks_mut(&mut self, piece: u32) -> &mut Blocks {
        let index = piece as usize;
        if self.blocks.len() <= index {
            self.blocks.resize_with(index + 1, Vec::new);
        }
        &mut self.blocks[index]
    }

    /// SHA-256 of the piece as stored.
    pub fn hash(&self, content: &Content, piece: u32) -> Digest {
        if self.is_original(content, piece) {
            return content.manifest.piece_hash(PieceIndex(piece));
        }
        Digest::of(&self.assemble(piece))
    }

    /// Records a piece as verified; a piece that differs from the original is a violation.
    pub fn mark_verified(&mut self, content: &Content, piece: u32) -> Result<(), StoreViolation> {
        self.set_verified(piece);
        if self.corrupt.contains(&piece) || self.is_original(content, piece) || self.equals_original(content, piece) {
            Ok(())
        } else {
            Err(StoreViolation::BadPieceVerified(piece))
        }
    }

    /// Reads a block of a piece for a remote (a corrupted piece reads corrupted).
    pub fn read(&self, piece: u32, offset: u32, len: u32) -> (Result<Bytes, String>, Option<StoreViolation>) {
        let violation = (!self.is_verified(piece)).then_some(StoreViolation::UnverifiedRead(piece));
        let Some(blocks) = self.blocks(piece) else {
            return (Err(format!("piece {piece} is not stored")), violation);
        };
        let end = u64::from(offset) + u64::from(len);
        if let Some((start, block)) = blocks.iter().rev().find(|(start, _)| *start <= offset) {
            if u64::from(*start) + block.len() as u64 >= end {
                let from = (offset - start) as usize;
                return (Ok(block.slice(from..from + len as usize)), violation);
            }
        }
        let whole = self.assemble(piece);
        match whole.get(offset as usize..end as usize) {
            Some(bytes) => (Ok(Bytes::copy_from_slice(bytes)), violation),
            None => (Err(format!("piece {piece} has no bytes at {offset}+{len}")), violation),
        }
    }

    /// The peer's own copy of `pieces` goes bad: one byte of each flips. Returns the pieces it
    /// actually held.
    pub fn corrupt(&mut self, pieces: &[u32]) -> Vec<u32> {
        let mut hit = Vec::new();
        for piece in pieces {
            if self.blocks(*piece).is_none() {
                continue;
            }
            let mut bad = BytesMut::from(&self.assemble(*piece)[..]);
            if let Some(first) = bad.first_mut() {
                *first ^= 0xff;
            }
            *self.blocks_mut(*piece) = vec![(0, bad.freeze())];
            self.corrupt.insert(*piece);
            hit.push(*piece);
        }
        hit
    }

    /// Moves the file to its final place: every piece must be here, verified and original.
    pub fn finalize(&mut self, content: &Content) -> Result<(), StoreViolation> {
        self.finalized = true;
        let all = content.manifest.piece_count();
        let intact =
            (0..all).all(|p| self.is_verified(p) && (self.is_original(content, p) || self.equals_original(content, p)));
        if intact {
            Ok(())
        } else {
            Err(StoreViolation::BadFinalFile)
        }
    }

    /// Whether the piece's blocks are exactly the original's memory, in order, covering it.
    fn is_original(&self, content: &Content, piece: u32) -> bool {
        let Some(blocks) = self.blocks(piece) else {
            return false;
        };
        let original = content.piece(piece);
        let mut next = 0usize;
        for (offset, block) in blocks {
            let expected = original.get(next..next + block.len());
            if *offset as usize != next || expected.is_none_or(|e| e.as_ptr() != block.as_ptr()) {
                return false;
            }
            next += block.len();
        }
        next == original.len()
    }

    fn equals_original(&self, content: &Content, piece: u32) -> bool {
        self.assemble(piece) == content.piece(piece)
    }

    /// The piece's bytes in offset order (gaps are simply skipped; a gapped piece fails its hash).
    fn assemble(&self, piece: u32) -> Bytes {
        let Some(blocks) = self.blocks(piece) else {
            return Bytes::new();
        };
        if blocks.len() == 1 {
            return blocks[0].1.clone();
        }
        let mut whole = BytesMut::new();
        for (_, block) in blocks {
            whole.extend_from_slice(block);
        }
        whole.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> Content {
        Content::generate(3, "f.bin", 40_000, 16_384)
    }

    #[test]
    fn original_pieces_hash_like_the_manifest_and_copies_are_hashed_for_real() {
        let c = content();
        let seeded = Store::seeded(&c, 0..3);
        assert_eq!(seeded.hash(&c, 1), c.manifest.piece_hash(PieceIndex(1)));
        let mut copy = Store::default();
        copy.write(2, 0, Bytes::copy_from_slice(&c.piece(2)));
        assert_eq!(copy.hash(&c, 2), c.manifest.piece_hash(PieceIndex(2)));
        assert_eq!(copy.mark_verified(&c, 2), Ok(()));
    }

    #[test]
    fn reads_slice_blocks_and_corruption_changes_the_hash() {
        let c = content();
        let mut store = Store::seeded(&c, [0]);
        let (block, violation) = store.read(0, 100, 50);
        assert_eq!(block.expect("stored"), c.piece(0).slice(100..150));
        assert_eq!(violation, None);
        assert_eq!(store.corrupt(&[0, 1]), vec![0]);
        assert_ne!(store.hash(&c, 0), c.manifest.piece_hash(PieceIndex(0)));
        assert_eq!(store.read(1, 0, 10).1, Some(StoreViolation::UnverifiedRead(1)));
    }

    #[test]
    fn verifying_a_wrong_piece_is_a_violation() {
        let c = content();
        let mut store = Store::default();
        store.write(0, 0, Bytes::from(vec![0u8; 16_384]));
        assert_eq!(store.mark_verified(&c, 0), Err(StoreViolation::BadPieceVerified(0)));
        assert_eq!(store.finalize(&c), Err(StoreViolation::BadFinalFile));
    }
}
