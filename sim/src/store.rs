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

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use p2p_core::limits::BLOCK_BYTES;
use p2p_core::rng::Rng;
use p2p_core::{piece_digest, Bitfield, Digest, FileId, Manifest, ManifestBuilder, PieceIndex, StoreError};

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
    /// What is stored of each piece, by index (grown on demand). Ten thousand peers of a scale
    /// run hold millions of pieces, nearly all of them the original's own memory: such a piece
    /// is one byte here, and only the others keep their blocks, in `copies`.
    pieces: Vec<Piece>,
    /// The blocks of every piece stored as [`Stored::Copy`].
    copies: BTreeMap<u32, Blocks>,
    corrupt: BTreeSet<u32>,
    allocated: bool,
    finalized: bool,
}

/// What a store holds of one piece.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Piece {
    stored: Stored,
    verified: bool,
}

/// The form a piece takes in a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stored {
    /// No block.
    #[default]
    Absent,
    /// The whole piece, as the very memory of the original (so its digest is known).
    Original,
    /// Blocks in `copies`: part of the piece, or bytes that are not the original's memory.
    Copy,
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
    pub fn seeded(pieces: impl IntoIterator<Item = u32>) -> Store {
        let mut store = Store::default();
        for piece in pieces {
            *store.piece_mut(piece) = Piece { stored: Stored::Original, verified: true };
        }
        store
    }

    /// The verified pieces, as a bitfield of the manifest's length.
    pub fn verified(&self, content: &Content) -> Bitfield {
        let mut have = Bitfield::new(content.manifest.piece_count());
        for (piece, _) in self.pieces.iter().enumerate().filter(|(_, p)| p.verified) {
            have.set(PieceIndex(piece as u32));
        }
        have
    }

    /// Whether a download was started here (its manifest kept).
    pub fn is_allocated(&self) -> bool {
        self.allocated
    }

    /// Whether the file is here at all: allocated, or some piece stored.
    fn holds_file(&self) -> bool {
        self.allocated || !self.pieces.is_empty()
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
    pub fn write(&mut self, content: &Content, piece: u32, offset: u32, bytes: Bytes) {
        let state = self.piece(piece);
        if state.verified {
            return;
        }
        let original = content.piece(piece);
        let whole_original = offset == 0 && bytes.len() == original.len() && bytes.as_ptr() == original.as_ptr();
        match (state.stored, whole_original) {
            (Stored::Original, true) => return,
            (Stored::Absent, true) => {
                self.piece_mut(piece).stored = Stored::Original;
                return;
            }
            (Stored::Original, false) => {
                self.copies.insert(piece, original_blocks(&original));
            }
            (Stored::Absent | Stored::Copy, _) => {}
        }
        self.piece_mut(piece).stored = Stored::Copy;
        let blocks = self.copies.entry(piece).or_default();
        match blocks.binary_search_by_key(&offset, |(start, _)| *start) {
            Ok(at) => blocks[at].1 = bytes,
            Err(at) => blocks.insert(at, (offset, bytes)),
        }
        if blocks_are_original(blocks, &original) {
            self.copies.remove(&piece);
            self.piece_mut(piece).stored = Stored::Original;
        }
    }

    fn piece(&self, piece: u32) -> Piece {
        self.pieces.get(piece as usize).copied().unwrap_or_default()
    }

    fn piece_mut(&mut self, piece: u32) -> &mut Piece {
        let index = piece as usize;
        if self.pieces.len() <= index {
            self.pieces.resize(index + 1, Piece::default());
        }
        &mut self.pieces[index]
    }

    /// SHA-256 of the piece as stored.
    pub fn hash(&self, content: &Content, piece: u32) -> Digest {
        if self.piece(piece).stored == Stored::Original {
            return content.manifest.piece_hash(PieceIndex(piece));
        }
        piece_digest(content.manifest.piece_size_bytes(), &self.assemble(content, piece))
    }

    /// Records a piece as verified; a piece that differs from the original is a violation.
    pub fn mark_verified(&mut self, content: &Content, piece: u32) -> Result<(), StoreViolation> {
        self.piece_mut(piece).verified = true;
        if self.corrupt.contains(&piece) || self.equals_original(content, piece) {
            Ok(())
        } else {
            Err(StoreViolation::BadPieceVerified(piece))
        }
    }

    /// Reads a block of a piece for a remote (a corrupted piece reads corrupted).
    pub fn read(
        &self,
        content: &Content,
        piece: u32,
        offset: u32,
        len: u32,
    ) -> (Result<Bytes, StoreError>, Option<StoreViolation>) {
        let state = self.piece(piece);
        let violation = (!state.verified).then_some(StoreViolation::UnverifiedRead(piece));
        let end = u64::from(offset) + u64::from(len);
        let found = match state.stored {
            Stored::Absent => return (Err(StoreError::NotHeld { piece: PieceIndex(piece) }), violation),
            Stored::Original => {
                let original = content.piece(piece);
                (end <= original.len() as u64).then(|| original.slice(offset as usize..end as usize))
            }
            Stored::Copy => self.read_copy(content, piece, offset, end),
        };
        match found {
            Some(bytes) => (Ok(bytes), violation),
            None => (Err(StoreError::OutOfRange { piece: PieceIndex(piece), offset, len: u64::from(len) }), violation),
        }
    }

    /// Bytes `offset..end` of a piece kept as blocks: a slice of the block holding them all,
    /// else a copy out of the whole piece.
    fn read_copy(&self, content: &Content, piece: u32, offset: u32, end: u64) -> Option<Bytes> {
        let blocks = self.copies.get(&piece)?;
        if let Some((start, block)) = blocks.iter().rev().find(|(start, _)| *start <= offset) {
            if u64::from(*start) + block.len() as u64 >= end {
                let from = (offset - start) as usize;
                return Some(block.slice(from..from + (end - u64::from(offset)) as usize));
            }
        }
        let whole = self.assemble(content, piece);
        whole.get(offset as usize..end as usize).map(Bytes::copy_from_slice)
    }

    /// The peer's own copy of `pieces` goes bad: one byte of each flips. Returns the pieces it
    /// actually held.
    pub fn corrupt(&mut self, content: &Content, pieces: &[u32]) -> Vec<u32> {
        let mut hit = Vec::new();
        for piece in pieces {
            if self.piece(*piece).stored == Stored::Absent {
                continue;
            }
            let mut bad = BytesMut::from(&self.assemble(content, *piece)[..]);
            if let Some(first) = bad.first_mut() {
                *first ^= 0xff;
            }
            self.copies.insert(*piece, vec![(0, bad.freeze())]);
            self.piece_mut(*piece).stored = Stored::Copy;
            self.corrupt.insert(*piece);
            hit.push(*piece);
        }
        hit
    }

    /// Moves the file to its final place: every piece must be here, verified and original.
    pub fn finalize(&mut self, content: &Content) -> Result<(), StoreViolation> {
        self.finalized = true;
        let all = content.manifest.piece_count();
        let intact = (0..all).all(|p| self.piece(p).verified && self.equals_original(content, p));
        if intact {
            Ok(())
        } else {
            Err(StoreViolation::BadFinalFile)
        }
    }

    fn equals_original(&self, content: &Content, piece: u32) -> bool {
        match self.piece(piece).stored {
            Stored::Original => true,
            Stored::Absent | Stored::Copy => self.assemble(content, piece) == content.piece(piece),
        }
    }

    /// The piece's bytes in offset order (gaps are simply skipped; a gapped piece fails its hash).
    fn assemble(&self, content: &Content, piece: u32) -> Bytes {
        match self.piece(piece).stored {
            Stored::Absent => Bytes::new(),
            Stored::Original => content.piece(piece),
            Stored::Copy => match self.copies.get(&piece).map(Vec::as_slice) {
                None | Some([]) => Bytes::new(),
                Some([(_, only)]) => only.clone(),
                Some(blocks) => {
                    let mut whole = BytesMut::new();
                    for (_, block) in blocks {
                        whole.extend_from_slice(block);
                    }
                    whole.freeze()
                }
            },
        }
    }
}

/// One peer's store as its driver uses it: core's [`p2p_core::store::Store`] contract over the
/// scenario's one file. A broken invariant of the run (a wrong piece verified, an unverified
/// piece read, a bad final file) is no store error: it is kept in `violation` for the outcome.
#[derive(Debug)]
pub(crate) struct PeerStore<'a> {
    store: &'a mut Store,
    content: &'a Content,
    file_id: FileId,
    /// The invariant the operations so far broke, if any.
    pub(crate) violation: Option<StoreViolation>,
}

impl<'a> PeerStore<'a> {
    /// `store` holding `content`, whose id is `file_id`.
    pub(crate) fn new(store: &'a mut Store, content: &'a Content, file_id: FileId) -> PeerStore<'a> {
        PeerStore { store, content, file_id, violation: None }
    }

    /// The length of `piece` of a file this store holds.
    fn piece_len(&self, file_id: FileId, piece: PieceIndex) -> Result<u32, StoreError> {
        if file_id != self.file_id || !self.store.holds_file() {
            return Err(StoreError::NotStored);
        }
        let manifest = &self.content.manifest;
        let out_of_range = StoreError::OutOfRange { piece, offset: 0, len: 0 };
        manifest.piece(piece.0).map(|p| manifest.piece_len(p)).ok_or(out_of_range)
    }
}

impl p2p_core::store::Store for PeerStore<'_> {
    fn allocate(&mut self, _manifest: &Manifest) -> Result<(), StoreError> {
        self.store.allocate();
        Ok(())
    }

    fn write_block(&mut self, file_id: FileId, piece: PieceIndex, offset: u32, bytes: Bytes) -> Result<(), StoreError> {
        let piece_len = self.piece_len(file_id, piece)?;
        if self.store.finalized {
            return Err(StoreError::NotDownloading);
        }
        let len = bytes.len() as u64;
        if u64::from(offset) + len > u64::from(piece_len) {
            return Err(StoreError::OutOfRange { piece, offset, len });
        }
        self.store.write(self.content, piece.0, offset, bytes);
        Ok(())
    }

    fn hash_piece(&mut self, file_id: FileId, piece: PieceIndex) -> Result<Digest, StoreError> {
        self.piece_len(file_id, piece)?;
        Ok(self.store.hash(self.content, piece.0))
    }

    fn mark_verified(&mut self, file_id: FileId, piece: PieceIndex) -> Result<(), StoreError> {
        self.piece_len(file_id, piece)?;
        self.violation = self.violation.take().or(self.store.mark_verified(self.content, piece.0).err());
        Ok(())
    }

    fn read_block(&mut self, file_id: FileId, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StoreError> {
        self.piece_len(file_id, piece)?;
        let (result, violation) = self.store.read(self.content, piece.0, offset, len);
        if violation.is_some() {
            self.violation = self.violation.take().or(violation);
            return Err(StoreError::NotHeld { piece });
        }
        result
    }

    fn finalize(&mut self, file_id: FileId) -> Result<(), StoreError> {
        self.piece_len(file_id, PieceIndex(0))?;
        let have = self.store.verified(self.content);
        if !have.is_full() {
            return Err(StoreError::Incomplete { have: have.count(), total: have.len() });
        }
        self.violation = self.violation.take().or(self.store.finalize(self.content).err());
        Ok(())
    }

    fn resume(&mut self, file_id: FileId) -> Result<Option<(Manifest, Bitfield)>, StoreError> {
        let held = file_id == self.file_id && self.store.holds_file();
        Ok(held.then(|| (self.content.manifest.clone(), self.store.verified(self.content))))
    }
}

/// `original` cut into the blocks a download writes it in.
fn original_blocks(original: &Bytes) -> Blocks {
    (0..original.len())
        .step_by(BLOCK_BYTES as usize)
        .map(|start| (start as u32, original.slice(start..original.len().min(start + BLOCK_BYTES as usize))))
        .collect()
}

/// Whether `blocks` are exactly `original`'s memory, in order, covering it.
fn blocks_are_original(blocks: &[(u32, Bytes)], original: &Bytes) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> Content {
        Content::generate(3, "f.bin", 40_000, 16_384)
    }

    #[test]
    fn original_pieces_hash_like_the_manifest_and_copies_are_hashed_for_real() {
        let c = content();
        let seeded = Store::seeded(0..3);
        assert_eq!(seeded.hash(&c, 1), c.manifest.piece_hash(PieceIndex(1)));
        let mut copy = Store::default();
        copy.write(&c, 2, 0, Bytes::copy_from_slice(&c.piece(2)));
        assert_eq!(copy.hash(&c, 2), c.manifest.piece_hash(PieceIndex(2)));
        assert_eq!(copy.mark_verified(&c, 2), Ok(()));
    }

    #[test]
    fn reads_slice_blocks_and_corruption_changes_the_hash() {
        let c = content();
        let mut store = Store::seeded([0]);
        let (block, violation) = store.read(&c, 0, 100, 50);
        assert_eq!(block.expect("stored"), c.piece(0).slice(100..150));
        assert_eq!(violation, None);
        assert_eq!(store.corrupt(&c, &[0, 1]), vec![0]);
        assert_ne!(store.hash(&c, 0), c.manifest.piece_hash(PieceIndex(0)));
        assert_eq!(store.read(&c, 1, 0, 10).1, Some(StoreViolation::UnverifiedRead(1)));
    }

    #[test]
    fn blocks_of_the_original_memory_become_an_original_piece() {
        let c = Content::generate(3, "f.bin", 2 << 20, 1 << 20);
        let mut store = Store::default();
        let piece = c.piece(1);
        let block = BLOCK_BYTES as usize;
        store.write(&c, 1, BLOCK_BYTES, piece.slice(block..2 * block));
        store.write(&c, 1, 2 * BLOCK_BYTES, piece.slice(2 * block..));
        assert_eq!(store.piece(1).stored, Stored::Copy, "half a piece is kept as blocks");
        assert_eq!(store.read(&c, 1, BLOCK_BYTES, 100).0, Ok(piece.slice(block..block + 100)));
        store.write(&c, 1, 0, piece.slice(..block));
        assert_eq!(store.piece(1).stored, Stored::Original);
        assert!(store.copies.is_empty());
        assert_eq!(store.hash(&c, 1), c.manifest.piece_hash(PieceIndex(1)));
        store.write(&c, 1, BLOCK_BYTES, Bytes::copy_from_slice(&piece[block..2 * block]));
        assert_eq!(store.piece(1).stored, Stored::Copy, "an equal copy is not the original's memory");
        assert_eq!(store.hash(&c, 1), c.manifest.piece_hash(PieceIndex(1)));
        let across = store.read(&c, 1, BLOCK_BYTES - 100, 200).0;
        assert_eq!(across, Ok(piece.slice(block - 100..block + 100)), "a read across two blocks");
    }

    #[test]
    fn the_memory_store_keeps_the_store_contract() {
        let c = content();
        let mut store = Store::default();
        // The simulated disk survives a crash of its peer: restarting changes nothing.
        let mut peer_store = PeerStore::new(&mut store, &c, c.manifest.file_id());
        p2p_core::store::conformance::check(&mut peer_store, |_| {}, &c.manifest, &c.bytes);
        // The suite's reads of unverified pieces are refused, and noted as a run's violation.
        assert_eq!(peer_store.violation, Some(StoreViolation::UnverifiedRead(0)));
    }

    #[test]
    fn verifying_a_wrong_piece_is_a_violation() {
        let c = content();
        let mut store = Store::default();
        store.write(&c, 0, 0, Bytes::from(vec![0u8; 16_384]));
        assert_eq!(store.mark_verified(&c, 0), Err(StoreViolation::BadPieceVerified(0)));
        assert_eq!(store.finalize(&c), Err(StoreViolation::BadFinalFile));
    }
}
