//! In-memory chunk stores: the simulated disk of each peer, holding real bytes.
//!
//! [`Content`] is the scenario's file: bytes generated from the seed and their manifest. Each
//! peer has a [`Store`] that survives crashes (a restarted peer resumes from it). Blocks are
//! kept as `Bytes` slices, so serving a chunk never copies it; a chunk whose blocks are the very
//! slices of the original file has the original's digest, which is then known without hashing
//! (the same memory holds the same bytes). Anything else — a corrupted copy — is hashed for real.
//!
//! The store also checks two invariants of a run for the world: a chunk recorded as verified
//! must equal the original, and only verified chunks may be read for a remote.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use p2p_core::limits::BLOCK_BYTES;
use p2p_core::rng::Rng;
use p2p_core::{
    Bitfield, ChunkIndex, Described, Digest, FileId, Manifest, ManifestBuilder, PieceIndex, Resume, StoreError,
};

/// The shared file: its bytes and manifest.
#[derive(Debug)]
pub struct Content {
    /// The whole file.
    pub bytes: Bytes,
    /// Its manifest.
    pub manifest: Manifest,
    /// The digest of each of its chunks, in order.
    chunk_digests: Vec<Digest>,
}

impl Content {
    /// `size_bytes` of seeded random bytes named `name`, cut into pieces of `piece_size_bytes`.
    pub fn generate(seed: u64, name: &str, size_bytes: u64, piece_size_bytes: u32) -> Content {
        let mut rng = Rng::from_seed(Rng::derive_seed(seed, "file"));
        // Scenario validation bounds the size by PIECES_MAX chunks of at most 16 MiB.
        let mut bytes = vec![0u8; usize::try_from(size_bytes).expect("file size fits in memory")];
        rng.fill(&mut bytes);
        // The name and chunk size were validated with the scenario.
        let mut builder = ManifestBuilder::new(name.to_owned(), piece_size_bytes).expect("validated name and size");
        builder.update(&bytes);
        let Described { manifest, chunk_digests } = builder.describe().expect("validated chunk count");
        Content { bytes: Bytes::from(bytes), manifest, chunk_digests }
    }

    /// The digest of the original `chunk`.
    pub fn chunk_digest(&self, chunk: u32) -> Digest {
        self.chunk_digests[chunk as usize]
    }

    /// The original bytes of `chunk`.
    pub fn chunk(&self, chunk: u32) -> Bytes {
        let index = ChunkIndex(chunk);
        // Offsets and lengths come from the manifest of these very bytes.
        let start = self.manifest.chunk_offset(index) as usize;
        self.bytes.slice(start..start + self.manifest.chunk_len(index) as usize)
    }
}

/// One peer's simulated disk for the scenario's file.
#[derive(Debug, Default)]
pub struct Store {
    /// What is stored of each chunk, by index (grown on demand). Ten thousand peers of a scale
    /// run hold millions of chunks, nearly all of them the original's own memory: such a chunk
    /// is one byte here, and only the others keep their blocks, in `copies`.
    chunks: Vec<Chunk>,
    /// The blocks of every chunk stored as [`Stored::Copy`].
    copies: BTreeMap<u32, Blocks>,
    corrupt: BTreeSet<u32>,
    /// The chunk digest lists the peer asked to keep, by piece.
    lists: BTreeMap<u32, Vec<Digest>>,
    allocated: bool,
    finalized: bool,
}

/// What a store holds of one chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Chunk {
    stored: Stored,
    verified: bool,
}

/// The form a chunk takes in a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stored {
    /// No block.
    #[default]
    Absent,
    /// The whole chunk, as the very memory of the original (so its digest is known).
    Original,
    /// Blocks in `copies`: part of the chunk, or bytes that are not the original's memory.
    Copy,
}

/// One chunk's blocks: `(offset within the chunk, bytes)`, sorted by offset, offsets unique.
type Blocks = Vec<(u32, Bytes)>;

/// A broken invariant found by a store, for the run's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreViolation {
    /// A chunk was recorded as verified but differs from the original.
    BadChunkVerified(u32),
    /// A chunk was read for a remote before it was verified.
    UnverifiedRead(u32),
    /// The file was finalized with a chunk missing or different from the original.
    BadFinalFile,
}

impl Store {
    /// A store that already holds these original chunks, verified.
    pub fn seeded(chunks: impl IntoIterator<Item = u32>) -> Store {
        let mut store = Store::default();
        for chunk in chunks {
            *store.chunk_mut(chunk) = Chunk { stored: Stored::Original, verified: true };
        }
        store
    }

    /// The verified chunks, as a bitfield of the manifest's length.
    pub fn verified(&self, content: &Content) -> Bitfield {
        let mut have = Bitfield::new(content.manifest.chunk_count());
        for (chunk, _) in self.chunks.iter().enumerate().filter(|(_, p)| p.verified) {
            have.set(ChunkIndex(chunk as u32));
        }
        have
    }

    /// The chunk digest lists kept (see `p2p_core::store::Store::keep_list`).
    pub fn lists(&self) -> Vec<(PieceIndex, Vec<Digest>)> {
        self.lists.iter().map(|(piece, list)| (PieceIndex(*piece), list.clone())).collect()
    }

    /// Whether a download was started here (its manifest kept).
    pub fn is_allocated(&self) -> bool {
        self.allocated
    }

    /// Whether the file is here at all: allocated, or some chunk stored.
    fn holds_file(&self) -> bool {
        self.allocated || !self.chunks.is_empty()
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
    pub fn write(&mut self, content: &Content, chunk: u32, offset: u32, bytes: Bytes) {
        let state = self.chunk(chunk);
        if state.verified {
            return;
        }
        let original = content.chunk(chunk);
        let whole_original = offset == 0 && bytes.len() == original.len() && bytes.as_ptr() == original.as_ptr();
        match (state.stored, whole_original) {
            (Stored::Original, true) => return,
            (Stored::Absent, true) => {
                self.chunk_mut(chunk).stored = Stored::Original;
                return;
            }
            (Stored::Original, false) => {
                self.copies.insert(chunk, original_blocks(&original));
            }
            (Stored::Absent | Stored::Copy, _) => {}
        }
        self.chunk_mut(chunk).stored = Stored::Copy;
        let blocks = self.copies.entry(chunk).or_default();
        match blocks.binary_search_by_key(&offset, |(start, _)| *start) {
            Ok(at) => blocks[at].1 = bytes,
            Err(at) => blocks.insert(at, (offset, bytes)),
        }
        if blocks_are_original(blocks, &original) {
            self.copies.remove(&chunk);
            self.chunk_mut(chunk).stored = Stored::Original;
        }
    }

    fn chunk(&self, chunk: u32) -> Chunk {
        self.chunks.get(chunk as usize).copied().unwrap_or_default()
    }

    fn chunk_mut(&mut self, chunk: u32) -> &mut Chunk {
        let index = chunk as usize;
        if self.chunks.len() <= index {
            self.chunks.resize(index + 1, Chunk::default());
        }
        &mut self.chunks[index]
    }

    /// SHA-256 of the chunk as stored.
    pub fn hash(&self, content: &Content, chunk: u32) -> Digest {
        if self.chunk(chunk).stored == Stored::Original {
            return content.chunk_digest(chunk);
        }
        Digest::of(&self.assemble(content, chunk))
    }

    /// Records a chunk as verified; a chunk that differs from the original is a violation.
    pub fn mark_verified(&mut self, content: &Content, chunk: u32) -> Result<(), StoreViolation> {
        self.chunk_mut(chunk).verified = true;
        if self.corrupt.contains(&chunk) || self.equals_original(content, chunk) {
            Ok(())
        } else {
            Err(StoreViolation::BadChunkVerified(chunk))
        }
    }

    /// Reads a block of a chunk for a remote (a corrupted chunk reads corrupted).
    pub fn read(
        &self,
        content: &Content,
        chunk: u32,
        offset: u32,
        len: u32,
    ) -> (Result<Bytes, StoreError>, Option<StoreViolation>) {
        let state = self.chunk(chunk);
        let violation = (!state.verified).then_some(StoreViolation::UnverifiedRead(chunk));
        let end = u64::from(offset) + u64::from(len);
        let found = match state.stored {
            Stored::Absent => return (Err(StoreError::NotHeld { chunk: ChunkIndex(chunk) }), violation),
            Stored::Original => {
                let original = content.chunk(chunk);
                (end <= original.len() as u64).then(|| original.slice(offset as usize..end as usize))
            }
            Stored::Copy => self.read_copy(content, chunk, offset, end),
        };
        match found {
            Some(bytes) => (Ok(bytes), violation),
            None => (Err(StoreError::OutOfRange { chunk: ChunkIndex(chunk), offset, len: u64::from(len) }), violation),
        }
    }

    /// Bytes `offset..end` of a chunk kept as blocks: a slice of the block holding them all,
    /// else a copy out of the whole chunk.
    fn read_copy(&self, content: &Content, chunk: u32, offset: u32, end: u64) -> Option<Bytes> {
        let blocks = self.copies.get(&chunk)?;
        if let Some((start, block)) = blocks.iter().rev().find(|(start, _)| *start <= offset) {
            if u64::from(*start) + block.len() as u64 >= end {
                let from = (offset - start) as usize;
                return Some(block.slice(from..from + (end - u64::from(offset)) as usize));
            }
        }
        let whole = self.assemble(content, chunk);
        whole.get(offset as usize..end as usize).map(Bytes::copy_from_slice)
    }

    /// The peer's own copy of `chunks` goes bad: one byte of each flips. Returns the chunks it
    /// actually held.
    pub fn corrupt(&mut self, content: &Content, chunks: &[u32]) -> Vec<u32> {
        let mut hit = Vec::new();
        for chunk in chunks {
            if self.chunk(*chunk).stored == Stored::Absent {
                continue;
            }
            let mut bad = BytesMut::from(&self.assemble(content, *chunk)[..]);
            if let Some(first) = bad.first_mut() {
                *first ^= 0xff;
            }
            self.copies.insert(*chunk, vec![(0, bad.freeze())]);
            self.chunk_mut(*chunk).stored = Stored::Copy;
            self.corrupt.insert(*chunk);
            hit.push(*chunk);
        }
        hit
    }

    /// Moves the file to its final place: every chunk must be here, verified and original.
    pub fn finalize(&mut self, content: &Content) -> Result<(), StoreViolation> {
        self.finalized = true;
        let all = content.manifest.chunk_count();
        let intact = (0..all).all(|p| self.chunk(p).verified && self.equals_original(content, p));
        if intact {
            Ok(())
        } else {
            Err(StoreViolation::BadFinalFile)
        }
    }

    fn equals_original(&self, content: &Content, chunk: u32) -> bool {
        match self.chunk(chunk).stored {
            Stored::Original => true,
            Stored::Absent | Stored::Copy => self.assemble(content, chunk) == content.chunk(chunk),
        }
    }

    /// The chunk's bytes in offset order (gaps are simply skipped; a gapped chunk fails its hash).
    fn assemble(&self, content: &Content, chunk: u32) -> Bytes {
        match self.chunk(chunk).stored {
            Stored::Absent => Bytes::new(),
            Stored::Original => content.chunk(chunk),
            Stored::Copy => match self.copies.get(&chunk).map(Vec::as_slice) {
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
/// scenario's one file. A broken invariant of the run (a wrong chunk verified, an unverified
/// chunk read, a bad final file) is no store error: it is kept in `violation` for the outcome.
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

    /// The length of `chunk` of a file this store holds.
    fn chunk_len(&self, file_id: FileId, chunk: ChunkIndex) -> Result<u32, StoreError> {
        if file_id != self.file_id || !self.store.holds_file() {
            return Err(StoreError::NotStored);
        }
        let manifest = &self.content.manifest;
        let out_of_range = StoreError::OutOfRange { chunk, offset: 0, len: 0 };
        manifest.chunk(chunk.0).map(|p| manifest.chunk_len(p)).ok_or(out_of_range)
    }
}

impl p2p_core::store::Store for PeerStore<'_> {
    fn allocate(&mut self, _manifest: &Manifest) -> Result<(), StoreError> {
        self.store.allocate();
        Ok(())
    }

    fn write_block(&mut self, file_id: FileId, chunk: ChunkIndex, offset: u32, bytes: Bytes) -> Result<(), StoreError> {
        let chunk_len = self.chunk_len(file_id, chunk)?;
        if self.store.finalized {
            return Err(StoreError::NotDownloading);
        }
        let len = bytes.len() as u64;
        if u64::from(offset) + len > u64::from(chunk_len) {
            return Err(StoreError::OutOfRange { chunk, offset, len });
        }
        self.store.write(self.content, chunk.0, offset, bytes);
        Ok(())
    }

    fn hash_chunk(&mut self, file_id: FileId, chunk: ChunkIndex) -> Result<Digest, StoreError> {
        self.chunk_len(file_id, chunk)?;
        Ok(self.store.hash(self.content, chunk.0))
    }

    fn mark_verified(&mut self, file_id: FileId, chunk: ChunkIndex) -> Result<(), StoreError> {
        self.chunk_len(file_id, chunk)?;
        self.violation = self.violation.take().or(self.store.mark_verified(self.content, chunk.0).err());
        Ok(())
    }

    fn read_block(&mut self, file_id: FileId, chunk: ChunkIndex, offset: u32, len: u32) -> Result<Bytes, StoreError> {
        self.chunk_len(file_id, chunk)?;
        let (result, violation) = self.store.read(self.content, chunk.0, offset, len);
        if violation.is_some() {
            self.violation = self.violation.take().or(violation);
            return Err(StoreError::NotHeld { chunk });
        }
        result
    }

    fn finalize(&mut self, file_id: FileId) -> Result<(), StoreError> {
        self.chunk_len(file_id, ChunkIndex(0))?;
        let have = self.store.verified(self.content);
        if !have.is_full() {
            return Err(StoreError::Incomplete { have: have.count(), total: have.len() });
        }
        self.violation = self.violation.take().or(self.store.finalize(self.content).err());
        Ok(())
    }

    fn keep_list(&mut self, file_id: FileId, piece: PieceIndex, digests: &[Digest]) -> Result<(), StoreError> {
        if file_id != self.file_id || piece.0 >= self.content.manifest.piece_count() {
            return Err(StoreError::NotStored);
        }
        self.store.lists.insert(piece.0, digests.to_vec());
        Ok(())
    }

    fn resume(&mut self, file_id: FileId) -> Result<Option<Resume>, StoreError> {
        let held = file_id == self.file_id && self.store.holds_file();
        Ok(held.then(|| Resume {
            manifest: self.content.manifest.clone(),
            have: self.store.verified(self.content),
            lists: self.store.lists(),
        }))
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
    fn original_chunks_hash_like_the_manifest_and_copies_are_hashed_for_real() {
        let c = content();
        let seeded = Store::seeded(0..3);
        assert_eq!(seeded.hash(&c, 1), c.chunk_digest(1));
        let mut copy = Store::default();
        copy.write(&c, 2, 0, Bytes::copy_from_slice(&c.chunk(2)));
        assert_eq!(copy.hash(&c, 2), c.chunk_digest(2));
        assert_eq!(copy.mark_verified(&c, 2), Ok(()));
    }

    #[test]
    fn reads_slice_blocks_and_corruption_changes_the_hash() {
        let c = content();
        let mut store = Store::seeded([0]);
        let (block, violation) = store.read(&c, 0, 100, 50);
        assert_eq!(block.expect("stored"), c.chunk(0).slice(100..150));
        assert_eq!(violation, None);
        assert_eq!(store.corrupt(&c, &[0, 1]), vec![0]);
        assert_ne!(store.hash(&c, 0), c.chunk_digest(0));
        assert_eq!(store.read(&c, 1, 0, 10).1, Some(StoreViolation::UnverifiedRead(1)));
    }

    #[test]
    fn blocks_of_the_original_memory_become_an_original_chunk() {
        let c = Content::generate(3, "f.bin", 8 << 20, 4 << 20);
        let mut store = Store::default();
        let chunk = c.chunk(1);
        let block = BLOCK_BYTES as usize;
        store.write(&c, 1, BLOCK_BYTES, chunk.slice(block..2 * block));
        store.write(&c, 1, 2 * BLOCK_BYTES, chunk.slice(2 * block..));
        assert_eq!(store.chunk(1).stored, Stored::Copy, "half a chunk is kept as blocks");
        assert_eq!(store.read(&c, 1, BLOCK_BYTES, 100).0, Ok(chunk.slice(block..block + 100)));
        store.write(&c, 1, 0, chunk.slice(..block));
        assert_eq!(store.chunk(1).stored, Stored::Original);
        assert!(store.copies.is_empty());
        assert_eq!(store.hash(&c, 1), c.chunk_digest(1));
        store.write(&c, 1, BLOCK_BYTES, Bytes::copy_from_slice(&chunk[block..2 * block]));
        assert_eq!(store.chunk(1).stored, Stored::Copy, "an equal copy is not the original's memory");
        assert_eq!(store.hash(&c, 1), c.chunk_digest(1));
        let across = store.read(&c, 1, BLOCK_BYTES - 100, 200).0;
        assert_eq!(across, Ok(chunk.slice(block - 100..block + 100)), "a read across two blocks");
    }

    #[test]
    fn the_memory_store_keeps_the_store_contract() {
        let c = content();
        let mut store = Store::default();
        // The simulated disk survives a crash of its peer: restarting changes nothing.
        let mut peer_store = PeerStore::new(&mut store, &c, c.manifest.file_id());
        p2p_core::store::conformance::check(&mut peer_store, |_| {}, &c.manifest, &c.bytes);
        // The suite's reads of unverified chunks are refused, and noted as a run's violation.
        assert_eq!(peer_store.violation, Some(StoreViolation::UnverifiedRead(0)));
    }

    #[test]
    fn verifying_a_wrong_chunk_is_a_violation() {
        let c = content();
        let mut store = Store::default();
        store.write(&c, 0, 0, Bytes::from(vec![0u8; 16_384]));
        assert_eq!(store.mark_verified(&c, 0), Err(StoreViolation::BadChunkVerified(0)));
        assert_eq!(store.finalize(&c), Err(StoreViolation::BadFinalFile));
    }
}
