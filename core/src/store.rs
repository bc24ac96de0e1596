//! The storage contract between a peer and its driver: [`Store`], which every driver's store
//! implements (net's files on disk, sim's memory, the test harness), and [`carry_out`], the one
//! mapping from a peer's storage [`Output`]s to the [`Completion`]s it expects back.
//!
//! The rules every store keeps, checked for all of them by the [`conformance`] suite:
//! - blocks land at their place whatever the order they are written in; a piece hashes to its
//!   manifest digest once all its blocks are written;
//! - only verified (or shared) pieces are read back, and every access stays inside one piece;
//! - verified pieces survive a crash and restart of the peer ([`Store::resume`]);
//! - a download is finalized only once every piece is verified, and is read-only after that.
//!
//! A store's failures are values ([`StoreError`]), never panics: the peer decides what a failed
//! write or read means for the download.

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::error::StoreError;
use crate::ids::{Digest, FileId, PieceIndex};
use crate::machine::{Completion, Output};
use crate::manifest::Manifest;

/// A peer's storage, as its driver keeps it.
pub trait Store {
    /// [`Output::Allocate`]: keep `manifest` and make room for its file. A file already stored
    /// (resumed, shared or complete) is left as it is.
    fn allocate(&mut self, manifest: &Manifest) -> Result<(), StoreError>;

    /// [`Output::WriteBlock`]: put `bytes` at `offset` within `piece` of a download.
    fn write_block(&mut self, file_id: FileId, piece: PieceIndex, offset: u32, bytes: Bytes) -> Result<(), StoreError>;

    /// [`Output::HashPiece`]: SHA-256 of `piece` as stored.
    fn hash_piece(&mut self, file_id: FileId, piece: PieceIndex) -> Result<Digest, StoreError>;

    /// [`Output::PieceVerified`]: `piece` passed its hash; it is served from now on and kept
    /// across a restart.
    fn mark_verified(&mut self, file_id: FileId, piece: PieceIndex) -> Result<(), StoreError>;

    /// [`Output::ReadBlock`]: `len` bytes at `offset` within a verified or shared `piece`.
    fn read_block(&mut self, file_id: FileId, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StoreError>;

    /// [`Output::Finalize`]: every piece is verified; put the file in its final place.
    fn finalize(&mut self, file_id: FileId) -> Result<(), StoreError>;

    /// What a restarted peer resumes from: the manifest and verified pieces of a download of
    /// `file_id` this store keeps, or `None` when it keeps none.
    fn resume(&mut self, file_id: FileId) -> Result<Option<(Manifest, Bitfield)>, StoreError>;
}

/// Carries out a storage `output` against `store`: the completion to hand back to the peer, or
/// `None` for the outputs that have none (`Allocate`, `PieceVerified`: their failures show at
/// the next write or read, or at restart) and for outputs that are not storage work.
pub fn carry_out(store: &mut impl Store, output: Output) -> Option<Completion> {
    match output {
        Output::Allocate { manifest } => {
            // A failed allocation is remembered by the store and reported by every write.
            store.allocate(&manifest).ok();
            None
        }
        Output::WriteBlock { file_id, piece, offset, bytes } => {
            let result = store.write_block(file_id, piece, offset, bytes);
            Some(Completion::BlockWritten { file_id, piece, offset, result })
        }
        Output::HashPiece { file_id, piece } => {
            Some(Completion::PieceHashed { file_id, piece, result: store.hash_piece(file_id, piece) })
        }
        Output::PieceVerified { file_id, piece } => {
            // The piece stays unverified in the store; a restart re-fetches it.
            store.mark_verified(file_id, piece).ok();
            None
        }
        Output::ReadBlock { conn, file_id, piece, offset, len } => {
            let result = store.read_block(file_id, piece, offset, len);
            Some(Completion::BlockRead { conn, file_id, piece, offset, result })
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
    /// least three pieces, the last one may be short). `restart` stands for a crash and restart
    /// of the peer: it must leave `store` as the driver would find it afterwards (reopened from
    /// disk, or the memory that survives).
    ///
    /// # Panics
    /// On the first rule the store breaks, saying which.
    pub fn check<S: Store>(store: &mut S, mut restart: impl FnMut(&mut S), manifest: &Manifest, bytes: &[u8]) {
        let file_id = manifest.file_id();
        assert!(manifest.piece_count() >= 3, "the suite needs a file of three pieces or more");
        unknown_files_are_refused(store, file_id);
        store.allocate(manifest).expect("allocate");
        blocks_written_in_any_order_hash_to_the_manifest(store, manifest, bytes, PieceIndex(2));
        reads_are_refused_until_verified(store, manifest, bytes, PieceIndex(2));
        store.mark_verified(file_id, PieceIndex(2)).expect("mark piece 2 verified");
        assert_eq!(
            read(store, manifest, PieceIndex(2), 1, 5),
            Ok(piece_bytes(manifest, bytes, PieceIndex(2))[1..6].to_vec())
        );
        accesses_outside_a_piece_are_refused(store, manifest, PieceIndex(2));
        let total = manifest.piece_count();
        assert_eq!(
            store.finalize(file_id),
            Err(StoreError::Incomplete { have: 1, total }),
            "finalize needs every piece"
        );

        restart(store);
        verified_pieces_survive_a_restart(store, manifest, &[PieceIndex(2)]);
        for piece in manifest.pieces().filter(|p| *p != PieceIndex(2)) {
            blocks_written_in_any_order_hash_to_the_manifest(store, manifest, bytes, piece);
            store.mark_verified(file_id, piece).expect("mark verified");
        }
        store.finalize(file_id).expect("finalize a complete download");
        let last = PieceIndex(total - 1);
        let block = Bytes::copy_from_slice(&piece_bytes(manifest, bytes, last)[..1]);
        assert!(store.write_block(file_id, last, 0, block).is_err(), "a finalized file is read-only");
        for piece in manifest.pieces() {
            let whole = piece_bytes(manifest, bytes, piece);
            let len = whole.len().min(BLOCK_BYTES as usize) as u32;
            assert_eq!(
                read(store, manifest, piece, 0, len),
                Ok(whole[..len as usize].to_vec()),
                "{piece} after finalize"
            );
        }
    }

    /// A file of three pieces of 16 KiB, the last one short, for stores that can hold any file.
    pub fn sample_file() -> (Manifest, Vec<u8>) {
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut builder = crate::manifest::ManifestBuilder::new("sample.bin".to_owned(), 16 * 1024).expect("valid");
        builder.update(&bytes);
        (builder.finish().expect("three pieces"), bytes)
    }

    fn unknown_files_are_refused<S: Store>(store: &mut S, file_id: FileId) {
        assert_eq!(store.write_block(file_id, PieceIndex(0), 0, Bytes::from_static(b"x")), Err(StoreError::NotStored));
        assert_eq!(store.hash_piece(file_id, PieceIndex(0)), Err(StoreError::NotStored));
        assert_eq!(store.read_block(file_id, PieceIndex(0), 0, 1), Err(StoreError::NotStored));
        assert_eq!(store.resume(file_id), Ok(None), "nothing to resume of an unknown file");
    }

    /// Writes `piece` as three blocks, last first, and checks its digest.
    fn blocks_written_in_any_order_hash_to_the_manifest<S: Store>(
        store: &mut S,
        manifest: &Manifest,
        bytes: &[u8],
        piece: PieceIndex,
    ) {
        let file_id = manifest.file_id();
        let whole = piece_bytes(manifest, bytes, piece);
        let (third, two_thirds) = (whole.len() / 3, 2 * whole.len() / 3);
        for (start, end) in [(two_thirds, whole.len()), (0, third), (third, two_thirds)] {
            let block = Bytes::copy_from_slice(&whole[start..end]);
            store.write_block(file_id, piece, start as u32, block).expect("write a block");
        }
        assert_eq!(store.hash_piece(file_id, piece), Ok(manifest.piece_hash(piece)), "{piece} as written");
    }

    fn reads_are_refused_until_verified<S: Store>(store: &mut S, manifest: &Manifest, bytes: &[u8], piece: PieceIndex) {
        let other = manifest.pieces().find(|p| *p != piece).expect("three pieces");
        assert_eq!(read(store, manifest, other, 0, 1), Err(StoreError::NotHeld { piece: other }), "never written");
        let len = piece_bytes(manifest, bytes, piece).len().min(16) as u32;
        assert_eq!(read(store, manifest, piece, 0, len), Err(StoreError::NotHeld { piece }), "written, not verified");
    }

    fn accesses_outside_a_piece_are_refused<S: Store>(store: &mut S, manifest: &Manifest, piece: PieceIndex) {
        let file_id = manifest.file_id();
        let piece_len = manifest.piece_len(piece);
        let crossing = store.read_block(file_id, piece, piece_len - 4, 8);
        assert!(matches!(crossing, Err(StoreError::OutOfRange { .. })), "a read across the piece end: {crossing:?}");
        let beyond = PieceIndex(manifest.piece_count());
        let written = store.write_block(file_id, beyond, 0, Bytes::from_static(b"x"));
        assert!(matches!(written, Err(StoreError::OutOfRange { .. })), "a write beyond the last piece: {written:?}");
        let over = Bytes::from(vec![0u8; piece_len as usize]);
        let written = store.write_block(file_id, piece, 1, over);
        assert!(matches!(written, Err(StoreError::OutOfRange { .. })), "a write across the piece end: {written:?}");
    }

    fn verified_pieces_survive_a_restart<S: Store>(store: &mut S, manifest: &Manifest, verified: &[PieceIndex]) {
        let (kept, have) = store.resume(manifest.file_id()).expect("resume").expect("a download to resume");
        assert_eq!(&kept, manifest, "the manifest is kept");
        assert_eq!(have.iter().collect::<Vec<_>>(), verified, "exactly the verified pieces are kept");
    }

    fn read<S: Store>(
        store: &mut S,
        manifest: &Manifest,
        piece: PieceIndex,
        offset: u32,
        len: u32,
    ) -> Result<Vec<u8>, StoreError> {
        store.read_block(manifest.file_id(), piece, offset, len).map(|b| b.to_vec())
    }

    fn piece_bytes<'a>(manifest: &Manifest, bytes: &'a [u8], piece: PieceIndex) -> &'a [u8] {
        let start = manifest.piece_offset(piece) as usize;
        &bytes[start..start + manifest.piece_len(piece) as usize]
    }
}
