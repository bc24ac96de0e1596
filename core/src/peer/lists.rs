//! Chunk digest lists: what lets a chunk be checked on its own, and passed on as soon as it is,
//! while the rest of its piece is still arriving (see `manifest/digest.rs`).
//!
//! A piece of one chunk needs no list: its chunk's digest hashes to the piece's digest in the
//! manifest. A piece of several chunks is checked chunk by chunk against its list, the
//! digests of its chunks, which the manifest does not carry (it keeps one digest a piece) but
//! checks with one hash. [`Lists`] owns:
//! - the lists this peer knows, by file and piece: learned from a remote's `Chunks` message, or
//!   read from the store for a piece held whole (`Output::ReadChunkDigests`); each is checked
//!   against the manifest before it is kept. At most `CHUNKS_PER_PIECE_MAX` digests per
//!   piece of a file this peer holds or fetches, dropped with the file;
//! - the blocks read for a remote that wait for their piece's list to be read first;
//! - per connection, which lists went out on it, so that a list crosses a connection once
//!   before the first `Data` of its piece. At most [`SENT_LISTS_PER_CONN_MAX`] are remembered
//!   (forgetting one costs a list sent again); a remote that sends a new bitfield for a file
//!   may have dropped what it knew of it, so what was sent to it for that file is forgotten.
//!
//! A holder of a chunk always has its piece's list: it learned it to verify the chunk, or it
//! holds the piece whole. A download keeps each list it learns in its store
//! (`Output::KeepList`), which hands them back at a restart; a chunk of a piece held in part
//! whose list is not back is fetched again ([`Lists::checkable`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::ids::{ChunkIndex, ConnId, Digest, FileId, PieceIndex};
use crate::limits::SENT_LISTS_PER_CONN_MAX;
use crate::manifest::{piece_digest_of_chunks, Manifest};

/// A block read for the remote on `conn`.
#[derive(Debug)]
pub(super) struct Block {
    pub conn: ConnId,
    pub file_id: FileId,
    pub chunk: ChunkIndex,
    pub offset: u32,
    pub bytes: Bytes,
}

/// Whether a block read for a remote can go out.
#[derive(Debug)]
pub(super) enum Ready {
    /// At once: its piece has one chunk, or its list already went out on the connection.
    Now(Block),
    /// Once this list of its piece went out.
    ListFirst(Box<[Digest]>, Block),
    /// Once its piece's list is read from the store: the block waits here, and `read` says
    /// whether the read is to be asked for (it is not under way yet).
    Waits { read: bool },
}

/// The chunk digest lists a peer knows and sends; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Lists {
    known: BTreeMap<FileId, BTreeMap<PieceIndex, Box<[Digest]>>>,
    reading: BTreeSet<(FileId, PieceIndex)>,
    parked: Vec<Block>,
    sent: BTreeMap<ConnId, VecDeque<(FileId, PieceIndex)>>,
}

impl Lists {
    /// Whether the chunks of `piece` need a list to be checked.
    fn needed(manifest: &Manifest, piece: PieceIndex) -> bool {
        manifest.chunks_of(piece).nth(1).is_some()
    }

    /// Whether a block of `chunk` can be taken in: its piece's list is known when it needs one.
    pub fn can_check(&self, manifest: &Manifest, chunk: ChunkIndex) -> bool {
        let piece = manifest.piece_of(chunk);
        !Self::needed(manifest, piece) || self.get(manifest.file_id(), piece).is_some()
    }

    /// Whether `digest`, of `chunk` as stored, is the chunk's expected digest.
    pub fn checks(&self, manifest: &Manifest, chunk: ChunkIndex, digest: Digest) -> bool {
        let piece = manifest.piece_of(chunk);
        if !Self::needed(manifest, piece) {
            return piece_digest_of_chunks(&[digest]) == manifest.piece_hash(piece);
        }
        self.get(manifest.file_id(), piece).is_some_and(|list| list[manifest.place_in_piece(chunk)] == digest)
    }

    /// Whether the list of `piece` of `file_id` is known.
    pub fn knows(&self, file_id: FileId, piece: PieceIndex) -> bool {
        self.get(file_id, piece).is_some()
    }

    /// The chunks of `have` that can be checked and served: those of pieces held whole, of
    /// pieces of one chunk, or of pieces whose list is known (see the module docs).
    pub fn checkable(&self, manifest: &Manifest, have: &Bitfield) -> Bitfield {
        let mut kept = Bitfield::new(have.len());
        for piece in manifest.pieces() {
            let whole = manifest.chunks_of(piece).all(|chunk| have.has(chunk));
            if whole || !Self::needed(manifest, piece) || self.knows(manifest.file_id(), piece) {
                for chunk in manifest.chunks_of(piece).filter(|chunk| have.has(*chunk)) {
                    kept.set(chunk);
                }
            }
        }
        kept
    }

    fn get(&self, file_id: FileId, piece: PieceIndex) -> Option<&[Digest]> {
        self.known.get(&file_id)?.get(&piece).map(|list| &list[..])
    }

    /// A list for `piece` arrived or was read: kept when it is the piece's (see
    /// [`Manifest::is_chunk_list`]). Returns whether it is.
    pub fn learn(&mut self, manifest: &Manifest, piece: PieceIndex, digests: &[Digest]) -> bool {
        if piece.0 >= manifest.piece_count() || !manifest.is_chunk_list(piece, digests) {
            return false;
        }
        self.known.entry(manifest.file_id()).or_default().entry(piece).or_insert_with(|| digests.into());
        true
    }

    /// A block of `chunk` is about to be read for a remote: the piece whose list to read from
    /// the store at the same time, when it needs one that is neither known nor being read.
    pub fn start_read(&mut self, manifest: &Manifest, chunk: ChunkIndex) -> Option<PieceIndex> {
        let piece = manifest.piece_of(chunk);
        let file_id = manifest.file_id();
        (Self::needed(manifest, piece) && !self.knows(file_id, piece) && self.reading.insert((file_id, piece)))
            .then_some(piece)
    }

    /// `block` is about to go out: what must go before it.
    pub fn ready(&mut self, manifest: &Manifest, block: Block) -> Ready {
        let piece = manifest.piece_of(block.chunk);
        let file_id = manifest.file_id();
        let sent = self.sent.entry(block.conn).or_default();
        if !Self::needed(manifest, piece) || sent.contains(&(file_id, piece)) {
            return Ready::Now(block);
        }
        if let Some(list) = self.known.get(&file_id).and_then(|lists| lists.get(&piece)) {
            if sent.len() == SENT_LISTS_PER_CONN_MAX {
                sent.pop_front();
            }
            sent.push_back((file_id, piece));
            return Ready::ListFirst(list.clone(), block);
        }
        self.parked.push(block);
        Ready::Waits { read: self.reading.insert((file_id, piece)) }
    }

    /// The store read the list of `piece` (or failed to): the blocks parked for it, to send
    /// again. The list is kept when it is the piece's.
    pub fn read(&mut self, manifest: &Manifest, piece: PieceIndex, digests: Option<&[Digest]>) -> (bool, Vec<Block>) {
        let file_id = manifest.file_id();
        self.reading.remove(&(file_id, piece));
        let kept = digests.is_some_and(|digests| self.learn(manifest, piece, digests));
        let (waiting, rest) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.file_id == file_id && manifest.piece_of(p.chunk) == piece);
        self.parked = rest;
        (kept, waiting)
    }

    /// The remote on `conn` sent a new bitfield for `file_id`: it may know no list of it.
    pub fn forget_sent(&mut self, conn: ConnId, file_id: FileId) {
        if let Some(sent) = self.sent.get_mut(&conn) {
            sent.retain(|(f, _)| *f != file_id);
        }
    }

    /// `conn` is gone.
    pub fn forget_conn(&mut self, conn: ConnId) {
        self.sent.remove(&conn);
        self.parked.retain(|p| p.conn != conn);
    }

    /// `file_id` is gone from this peer.
    pub fn forget_file(&mut self, file_id: FileId) {
        self.known.remove(&file_id);
        self.reading.retain(|(f, _)| *f != file_id);
        self.parked.retain(|p| p.file_id != file_id);
        for sent in self.sent.values_mut() {
            sent.retain(|(f, _)| *f != file_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ManifestBuilder;

    /// Three pieces of 64 KiB: four chunks of 16 KiB, the last piece two.
    fn sample() -> (Manifest, Vec<u8>) {
        let bytes: Vec<u8> = (0..(64 + 64 + 20) * 1024u32).map(|i| (i % 253) as u8).collect();
        let mut builder = ManifestBuilder::new("f".into(), 64 * 1024).expect("valid");
        builder.update(&bytes);
        (builder.finish().expect("valid"), bytes)
    }

    fn list(manifest: &Manifest, bytes: &[u8], piece: u32) -> Vec<Digest> {
        manifest
            .chunks_of(PieceIndex(piece))
            .map(|c| {
                let at = manifest.chunk_offset(c) as usize;
                Digest::of(&bytes[at..at + manifest.chunk_len(c) as usize])
            })
            .collect()
    }

    fn block(conn: u64, chunk: u32) -> Block {
        Block {
            conn: ConnId::Inbound(conn),
            file_id: FileId(Digest([0; 32])),
            chunk: ChunkIndex(chunk),
            offset: 0,
            bytes: Bytes::new(),
        }
    }

    #[test]
    fn a_chunk_is_checked_against_a_list_only_once_the_list_is_checked_against_the_manifest() {
        let (manifest, bytes) = sample();
        let mut lists = Lists::default();
        let good = list(&manifest, &bytes, 1);
        assert!(!lists.can_check(&manifest, ChunkIndex(5)));
        assert!(!lists.checks(&manifest, ChunkIndex(5), good[1]));
        let mut bad = good.clone();
        bad[2] = Digest([9; 32]);
        assert!(!lists.learn(&manifest, PieceIndex(1), &bad));
        assert!(!lists.learn(&manifest, PieceIndex(0), &good), "another piece's list");
        assert!(!lists.learn(&manifest, PieceIndex(7), &good), "no such piece");
        assert!(lists.learn(&manifest, PieceIndex(1), &good));
        assert!(lists.can_check(&manifest, ChunkIndex(5)));
        assert!(lists.checks(&manifest, ChunkIndex(5), good[1]));
        assert!(!lists.checks(&manifest, ChunkIndex(5), good[0]));
    }

    #[test]
    fn a_list_goes_out_once_per_connection_and_blocks_wait_for_a_list_being_read() {
        let (manifest, bytes) = sample();
        let file_id = manifest.file_id();
        let mut lists = Lists::default();
        let at = |conn, chunk| Block { file_id, ..block(conn, chunk) };
        assert_eq!(lists.start_read(&manifest, ChunkIndex(4)), Some(PieceIndex(1)), "read with the block");
        assert_eq!(lists.start_read(&manifest, ChunkIndex(5)), None, "one read");
        assert_eq!(lists.start_read(&manifest, ChunkIndex(8)), Some(PieceIndex(2)));
        assert!(matches!(lists.ready(&manifest, at(1, 4)), Ready::Waits { read: false }));
        assert!(matches!(lists.ready(&manifest, at(2, 5)), Ready::Waits { read: false }), "one read");
        let (kept, waiting) = lists.read(&manifest, PieceIndex(1), Some(&list(&manifest, &bytes, 1)));
        assert!(kept);
        assert_eq!(waiting.len(), 2);
        assert!(matches!(lists.ready(&manifest, at(1, 4)), Ready::ListFirst(..)));
        assert!(matches!(lists.ready(&manifest, at(1, 6)), Ready::Now(_)), "already sent on this connection");
        assert!(matches!(lists.ready(&manifest, at(2, 6)), Ready::ListFirst(..)));
        assert!(matches!(lists.ready(&manifest, at(2, 9)), Ready::Waits { read: false }), "read with its block");
        lists.forget_sent(ConnId::Inbound(1), file_id);
        assert!(matches!(lists.ready(&manifest, at(1, 6)), Ready::ListFirst(..)));
    }

    #[test]
    fn a_list_read_wrong_is_not_kept_and_frees_its_blocks() {
        let (manifest, bytes) = sample();
        let mut lists = Lists::default();
        let at = |conn, chunk| Block { file_id: manifest.file_id(), ..block(conn, chunk) };
        assert!(matches!(lists.ready(&manifest, at(1, 0)), Ready::Waits { read: true }));
        let (kept, waiting) = lists.read(&manifest, PieceIndex(0), Some(&list(&manifest, &bytes, 1)));
        assert!(!kept);
        assert_eq!(waiting.len(), 1);
        assert!(!lists.can_check(&manifest, ChunkIndex(0)));
    }

    #[test]
    fn pieces_held_in_part_are_kept_only_with_their_list_and_a_piece_of_one_chunk_needs_none() {
        let (manifest, bytes) = sample();
        let mut have = Bitfield::new(manifest.chunk_count());
        for chunk in [0, 1, 2, 3, 4, 8] {
            have.set(ChunkIndex(chunk));
        }
        let mut lists = Lists::default();
        let kept: Vec<u32> = lists.checkable(&manifest, &have).iter().map(|c| c.0).collect();
        assert_eq!(kept, [0, 1, 2, 3]);
        assert!(lists.learn(&manifest, PieceIndex(2), &list(&manifest, &bytes, 2)));
        let kept: Vec<u32> = lists.checkable(&manifest, &have).iter().map(|c| c.0).collect();
        assert_eq!(kept, [0, 1, 2, 3, 8]);
        let small = ManifestBuilder::new("s".into(), 16 * 1024).expect("valid");
        let mut small = small;
        small.update(&bytes[..16 * 1024]);
        let small = small.finish().expect("valid");
        let lists = Lists::default();
        assert!(lists.can_check(&small, ChunkIndex(0)));
        assert!(lists.checks(&small, ChunkIndex(0), Digest::of(&bytes[..16 * 1024])));
    }
}
