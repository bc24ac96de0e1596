//! The storage contract between a peer and its driver: [`Store`], which every driver's store
//! implements (net's files on disk, sim's memory, the test harness), and [`carry_out`], the one
//! mapping from a peer's storage [`Output`]s to the [`Completion`]s it expects back.
//!
//! The rules every store keeps, checked for all of them by the [`conformance`] suite:
//! - blocks land at their place whatever the order they are written in; a chunk hashes to its
//!   digest (plain SHA-256; its piece's digest in the manifest hashes the chunks' digests) once
//!   all its blocks are written;
//! - only verified (or shared) chunks are read back, and every access stays inside one chunk;
//! - verified chunks survive a crash and restart of the peer ([`Store::resume`]);
//! - a download is finalized only once every chunk is verified, and is read-only after that.
//!
//! A store's failures are values ([`StoreError`]), never panics: the peer decides what a failed
//! write or read means for the download.

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::error::StoreError;
use crate::ids::{ChunkIndex, Digest, FileId, PieceIndex};
use crate::machine::{Completion, Output};
use crate::manifest::Manifest;

/// What a restarted peer resumes a download from (see [`Store::resume`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The file's manifest.
    pub manifest: Manifest,
    /// The chunks verified in an earlier run.
    pub have: Bitfield,
    /// The chunk digest lists kept of pieces held in part (see [`Store::keep_list`]): without
    /// its list, a chunk of such a piece can be neither served nor trusted after a restart.
    pub lists: Vec<(PieceIndex, Vec<Digest>)>,
}

/// A peer's storage, as its driver keeps it.
pub trait Store {
    /// [`Output::Allocate`]: keep `manifest` and make room for its file. A file already stored
    /// (resumed, shared or complete) is left as it is.
    fn allocate(&mut self, manifest: &Manifest) -> Result<(), StoreError>;

    /// [`Output::WriteBlock`]: put `bytes` at `offset` within `chunk` of a download.
    fn write_block(&mut self, file_id: FileId, chunk: ChunkIndex, offset: u32, bytes: Bytes) -> Result<(), StoreError>;

    /// [`Output::HashChunk`]: SHA-256 of `chunk` as stored.
    fn hash_chunk(&mut self, file_id: FileId, chunk: ChunkIndex) -> Result<Digest, StoreError>;

    /// [`Output::ReadChunkDigests`]: the digests of `chunks`, the chunks of `piece` held
    /// whole, as stored. A store that keeps them answers without hashing.
    fn chunk_digests(
        &mut self,
        file_id: FileId,
        piece: PieceIndex,
        chunks: &[ChunkIndex],
    ) -> Result<Vec<Digest>, StoreError> {
        _ = piece;
        chunks.iter().map(|chunk| self.hash_chunk(file_id, *chunk)).collect()
    }

    /// [`Output::ChunkVerified`]: `chunk` passed its hash; it is served from now on and kept
    /// across a restart.
    fn mark_verified(&mut self, file_id: FileId, chunk: ChunkIndex) -> Result<(), StoreError>;

    /// [`Output::ReadBlock`]: `len` bytes at `offset` within a verified or shared `chunk`.
    fn read_block(&mut self, file_id: FileId, chunk: ChunkIndex, offset: u32, len: u32) -> Result<Bytes, StoreError>;

    /// [`Output::Finalize`]: every chunk is verified; put the file in its final place.
    fn finalize(&mut self, file_id: FileId) -> Result<(), StoreError>;

    /// [`Output::KeepList`]: keep the chunk digests of `piece` of a download, checked by the
    /// peer, as long as the download's verified chunks (a restart resumes with them).
    fn keep_list(&mut self, file_id: FileId, piece: PieceIndex, digests: &[Digest]) -> Result<(), StoreError>;

    /// What a restarted peer resumes from: the manifest, verified chunks and kept lists of a
    /// download of `file_id` this store keeps, or `None` when it keeps none.
    fn resume(&mut self, file_id: FileId) -> Result<Option<Resume>, StoreError>;
}

/// Carries out a storage `output` against `store`: the completion to hand back to the peer, or
/// `None` for the outputs that have none (`Allocate`, `ChunkVerified`: their failures show at
/// the next write or read, or at restart) and for outputs that are not storage work.
pub fn carry_out(store: &mut impl Store, output: Output) -> Option<Completion> {
    match output {
        Output::Allocate { manifest } => {
            // A failed allocation is remembered by the store and reported by every write.
            store.allocate(&manifest).ok();
            None
        }
        Output::WriteBlock { file_id, chunk, offset, bytes } => {
            let result = store.write_block(file_id, chunk, offset, bytes);
            Some(Completion::BlockWritten { file_id, chunk, offset, result })
        }
        Output::HashChunk { file_id, chunk } => {
            Some(Completion::ChunkHashed { file_id, chunk, result: store.hash_chunk(file_id, chunk) })
        }
        Output::ChunkVerified { file_id, chunk } => {
            // The chunk stays unverified in the store; a restart re-fetches it.
            store.mark_verified(file_id, chunk).ok();
            None
        }
        Output::ReadBlock { conn, file_id, chunk, offset, len } => {
            let result = store.read_block(file_id, chunk, offset, len);
            Some(Completion::BlockRead { conn, file_id, chunk, offset, result })
        }
        Output::KeepList { file_id, piece, digests } => {
            // A list not kept costs its piece's chunks at a restart, nothing before.
            store.keep_list(file_id, piece, &digests).ok();
            None
        }
        Output::ReadChunkDigests { file_id, piece, chunks } => {
            Some(Completion::ChunkDigestsRead { file_id, piece, result: store.chunk_digests(file_id, piece, &chunks) })
        }
        Output::Finalize { file_id } => Some(Completion::Finalized { file_id, result: store.finalize(file_id) }),
        Output::Connect { .. } | Output::Send { .. } | Output::Close { .. } | Output::Event(_) => None,
    }
}

/// The conformance suite every [`Store`] passes, which the drivers' crates run in their tests.
pub mod conformance {
    use super::*;
    use crate::limits::BLOCK_BYTES;

    /// Runs every check against `store`, storing the file `manifest` describes (`bytes`: at
    /// least three chunks, the last one may be short). `restart` stands for a crash and restart
    /// of the peer: it must leave `store` as the driver would find it afterwards (reopened from
    /// disk, or the memory that survives).
    ///
    /// # Panics
    /// On the first rule the store breaks, saying which.
    pub fn check<S: Store>(store: &mut S, mut restart: impl FnMut(&mut S), manifest: &Manifest, bytes: &[u8]) {
        let file_id = manifest.file_id();
        assert!(manifest.chunk_count() >= 3, "the suite needs a file of three chunks or more");
        unknown_files_are_refused(store, file_id);
        store.allocate(manifest).expect("allocate");
        blocks_written_in_any_order_hash_to_the_manifest(store, manifest, bytes, ChunkIndex(2));
        reads_are_refused_until_verified(store, manifest, bytes, ChunkIndex(2));
        store.mark_verified(file_id, ChunkIndex(2)).expect("mark chunk 2 verified");
        assert_eq!(
            read(store, manifest, ChunkIndex(2), 1, 5),
            Ok(chunk_bytes(manifest, bytes, ChunkIndex(2))[1..6].to_vec())
        );
        accesses_outside_a_chunk_are_refused(store, manifest, ChunkIndex(2));
        let total = manifest.chunk_count();
        assert_eq!(
            store.finalize(file_id),
            Err(StoreError::Incomplete { have: 1, total }),
            "finalize needs every chunk"
        );

        // Chunk 0 of piece 0, kept with its piece's list.
        let list: Vec<Digest> =
            manifest.chunks_of(PieceIndex(0)).map(|c| Digest::of(chunk_bytes(manifest, bytes, c))).collect();
        store.keep_list(file_id, PieceIndex(0), &list).expect("keep a list");
        blocks_written_in_any_order_hash_to_the_manifest(store, manifest, bytes, ChunkIndex(0));
        store.mark_verified(file_id, ChunkIndex(0)).expect("mark chunk 0 verified");

        restart(store);
        let kept = verified_chunks_survive_a_restart(store, manifest, &[ChunkIndex(0), ChunkIndex(2)]);
        assert_eq!(kept.lists, [(PieceIndex(0), list)], "the list of a piece held in part is kept");
        for chunk in manifest.chunks().filter(|c| ![ChunkIndex(0), ChunkIndex(2)].contains(c)) {
            blocks_written_in_any_order_hash_to_the_manifest(store, manifest, bytes, chunk);
            store.mark_verified(file_id, chunk).expect("mark verified");
        }
        store.finalize(file_id).expect("finalize a complete download");
        let last = ChunkIndex(total - 1);
        let block = Bytes::copy_from_slice(&chunk_bytes(manifest, bytes, last)[..1]);
        assert!(store.write_block(file_id, last, 0, block).is_err(), "a finalized file is read-only");
        for chunk in manifest.chunks() {
            let whole = chunk_bytes(manifest, bytes, chunk);
            let len = whole.len().min(BLOCK_BYTES as usize) as u32;
            assert_eq!(
                read(store, manifest, chunk, 0, len),
                Ok(whole[..len as usize].to_vec()),
                "{chunk} after finalize"
            );
        }
    }

    /// A file of three chunks of 16 KiB, the last one short: a piece of two chunks and a piece
    /// of one, for stores that can hold any file.
    pub fn sample_file() -> (Manifest, Vec<u8>) {
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut builder = crate::manifest::ManifestBuilder::new("sample.bin".to_owned(), 32 * 1024).expect("valid");
        builder.update(&bytes);
        (builder.finish().expect("three chunks"), bytes)
    }

    fn unknown_files_are_refused<S: Store>(store: &mut S, file_id: FileId) {
        assert_eq!(store.write_block(file_id, ChunkIndex(0), 0, Bytes::from_static(b"x")), Err(StoreError::NotStored));
        assert_eq!(store.hash_chunk(file_id, ChunkIndex(0)), Err(StoreError::NotStored));
        assert_eq!(store.read_block(file_id, ChunkIndex(0), 0, 1), Err(StoreError::NotStored));
        assert_eq!(store.resume(file_id), Ok(None), "nothing to resume of an unknown file");
    }

    /// Writes `chunk` as three blocks, last first, and checks its digest.
    fn blocks_written_in_any_order_hash_to_the_manifest<S: Store>(
        store: &mut S,
        manifest: &Manifest,
        bytes: &[u8],
        chunk: ChunkIndex,
    ) {
        let file_id = manifest.file_id();
        let whole = chunk_bytes(manifest, bytes, chunk);
        let (third, two_thirds) = (whole.len() / 3, 2 * whole.len() / 3);
        for (start, end) in [(two_thirds, whole.len()), (0, third), (third, two_thirds)] {
            let block = Bytes::copy_from_slice(&whole[start..end]);
            store.write_block(file_id, chunk, start as u32, block).expect("write a block");
        }
        let digest = Digest::of(whole);
        assert_eq!(store.hash_chunk(file_id, chunk), Ok(digest), "{chunk} as written");
    }

    fn reads_are_refused_until_verified<S: Store>(store: &mut S, manifest: &Manifest, bytes: &[u8], chunk: ChunkIndex) {
        let other = manifest.chunks().find(|p| *p != chunk).expect("three chunks");
        assert_eq!(read(store, manifest, other, 0, 1), Err(StoreError::NotHeld { chunk: other }), "never written");
        let len = chunk_bytes(manifest, bytes, chunk).len().min(16) as u32;
        assert_eq!(read(store, manifest, chunk, 0, len), Err(StoreError::NotHeld { chunk }), "written, not verified");
    }

    fn accesses_outside_a_chunk_are_refused<S: Store>(store: &mut S, manifest: &Manifest, chunk: ChunkIndex) {
        let file_id = manifest.file_id();
        let chunk_len = manifest.chunk_len(chunk);
        let crossing = store.read_block(file_id, chunk, chunk_len - 4, 8);
        assert!(matches!(crossing, Err(StoreError::OutOfRange { .. })), "a read across the chunk end: {crossing:?}");
        let beyond = ChunkIndex(manifest.chunk_count());
        let written = store.write_block(file_id, beyond, 0, Bytes::from_static(b"x"));
        assert!(matches!(written, Err(StoreError::OutOfRange { .. })), "a write beyond the last chunk: {written:?}");
        let over = Bytes::from(vec![0u8; chunk_len as usize]);
        let written = store.write_block(file_id, chunk, 1, over);
        assert!(matches!(written, Err(StoreError::OutOfRange { .. })), "a write across the chunk end: {written:?}");
    }

    fn verified_chunks_survive_a_restart<S: Store>(
        store: &mut S,
        manifest: &Manifest,
        verified: &[ChunkIndex],
    ) -> Resume {
        let kept = store.resume(manifest.file_id()).expect("resume").expect("a download to resume");
        assert_eq!(&kept.manifest, manifest, "the manifest is kept");
        assert_eq!(kept.have.iter().collect::<Vec<_>>(), verified, "exactly the verified chunks are kept");
        kept
    }

    fn read<S: Store>(
        store: &mut S,
        manifest: &Manifest,
        chunk: ChunkIndex,
        offset: u32,
        len: u32,
    ) -> Result<Vec<u8>, StoreError> {
        store.read_block(manifest.file_id(), chunk, offset, len).map(|b| b.to_vec())
    }

    fn chunk_bytes<'a>(manifest: &Manifest, bytes: &'a [u8], chunk: ChunkIndex) -> &'a [u8] {
        let start = manifest.chunk_offset(chunk) as usize;
        &bytes[start..start + manifest.chunk_len(chunk) as usize]
    }
}
