//! A piece's digest: SHA-256 of the list of its chunks' SHA-256 digests.
//!
//! A piece is cut into chunks of [`chunk_bytes`] (the last may be shorter), at most
//! [`CHUNKS_PER_PIECE_MAX`] of them; the manifest's digest of the piece is SHA-256 of the
//! concatenation of the chunks' digests, in order. So whoever knows a piece's chunk digests
//! (at most 512 bytes, checked against the manifest with one hash) can check each chunk on its
//! own as it arrives, while the manifest keeps one digest per piece. [`PieceHasher`] is the one
//! implementation of the rule: the manifest builder and every store hash pieces with it.

use sha2::Digest as _;

use crate::ids::Digest;
use crate::limits::{CHUNKS_PER_PIECE_MAX, CHUNK_BYTES_MIN};

/// The chunk size of pieces of `piece_size_bytes`: a [`CHUNKS_PER_PIECE_MAX`]th of the piece,
/// at least [`CHUNK_BYTES_MIN`] and at most the piece.
pub fn chunk_bytes(piece_size_bytes: u32) -> u32 {
    (piece_size_bytes / CHUNKS_PER_PIECE_MAX).max(CHUNK_BYTES_MIN).min(piece_size_bytes)
}

/// Computes the digest of one piece from its bytes fed in order, in any slices.
#[derive(Clone, Debug)]
pub struct PieceHasher {
    chunk_bytes: u32,
    /// The chunk being fed.
    chunk: sha2::Sha256,
    chunk_len: u32,
    /// The digests of the finished chunks, in order.
    chunks: Vec<Digest>,
}

impl PieceHasher {
    /// A hasher for a piece of a manifest whose pieces are `piece_size_bytes` (the piece itself
    /// may be the shorter last one).
    pub fn new(piece_size_bytes: u32) -> PieceHasher {
        PieceHasher {
            chunk_bytes: chunk_bytes(piece_size_bytes).max(1),
            chunk: sha2::Sha256::new(),
            chunk_len: 0,
            chunks: Vec::with_capacity(CHUNKS_PER_PIECE_MAX as usize),
        }
    }

    /// Feeds the next bytes of the piece.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut chunk_len = self.chunk_len;
        for_each_unit(bytes, self.chunk_bytes, &mut chunk_len, |now, full| {
            self.chunk.update(now);
            if full {
                self.finish_chunk();
            }
        });
        self.chunk_len = chunk_len;
    }

    /// The digest of the piece fed, and a hasher ready for the next piece.
    pub fn finish(&mut self) -> Digest {
        piece_digest_of_chunks(&self.finish_chunks())
    }

    /// The digests of the piece's chunks (its list, see [`piece_digest_of_chunks`]), and a
    /// hasher ready for the next piece.
    pub fn finish_chunks(&mut self) -> Vec<Digest> {
        if self.chunk_len > 0 {
            self.finish_chunk();
        }
        std::mem::replace(&mut self.chunks, Vec::with_capacity(CHUNKS_PER_PIECE_MAX as usize))
    }

    fn finish_chunk(&mut self) {
        let chunk = std::mem::take(&mut self.chunk).finalize();
        self.chunks.push(Digest(chunk.into()));
        self.chunk_len = 0;
    }
}

/// Cuts `bytes`, the next bytes of a stream of units of `unit_bytes` of which `filled` are
/// already fed, at the units' ends: `feed` gets each part and whether it completes a unit, and
/// `filled` follows.
pub(super) fn for_each_unit(mut bytes: &[u8], unit_bytes: u32, filled: &mut u32, mut feed: impl FnMut(&[u8], bool)) {
    while !bytes.is_empty() {
        let room = (unit_bytes - *filled) as usize;
        let (now, rest) = bytes.split_at(room.min(bytes.len()));
        // `now` is at most a unit, which fits in u32.
        *filled += now.len() as u32;
        let full = *filled == unit_bytes;
        if full {
            *filled = 0;
        }
        feed(now, full);
        bytes = rest;
    }
}

/// The digest of a piece from its chunks' digests, in order.
pub fn piece_digest_of_chunks(chunk_digests: &[Digest]) -> Digest {
    let mut hasher = sha2::Sha256::new();
    for digest in chunk_digests {
        hasher.update(digest.0);
    }
    Digest(hasher.finalize().into())
}

/// The digest of the piece `bytes` of a manifest whose pieces are `piece_size_bytes`.
pub fn piece_digest(piece_size_bytes: u32, bytes: &[u8]) -> Digest {
    let mut hasher = PieceHasher::new(piece_size_bytes);
    hasher.update(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::limits::{PIECE_BYTES_MAX, PIECE_BYTES_MIN};

    /// The rule written out: the chunks' digests concatenated, then hashed.
    fn by_rule(piece_size_bytes: u32, bytes: &[u8]) -> Digest {
        let list: Vec<u8> =
            bytes.chunks(chunk_bytes(piece_size_bytes) as usize).flat_map(|chunk| Digest::of(chunk).0).collect();
        Digest::of(&list)
    }

    #[test]
    fn chunks_are_a_quarter_of_a_piece_but_never_under_16_kib() {
        assert_eq!(chunk_bytes(PIECE_BYTES_MIN), 16 * 1024);
        assert_eq!(chunk_bytes(32 * 1024), 16 * 1024);
        assert_eq!(chunk_bytes(256 * 1024), 64 * 1024);
        assert_eq!(chunk_bytes(1024 * 1024), 256 * 1024);
        assert_eq!(chunk_bytes(PIECE_BYTES_MAX), PIECE_BYTES_MAX / CHUNKS_PER_PIECE_MAX);
    }

    #[test]
    fn a_piece_of_one_chunk_hashes_its_chunk_digest() {
        let bytes = vec![3u8; 16 * 1024];
        assert_eq!(piece_digest(16 * 1024, &bytes), Digest::of(&Digest::of(&bytes).0));
        assert_ne!(piece_digest(16 * 1024, &bytes), Digest::of(&bytes));
    }

    proptest! {
        #[test]
        fn any_slicing_gives_the_rules_digest(
            piece_kib in prop::sample::select(vec![16u32, 32, 256, 1024]),
            len in 1usize..300_000,
            cuts in prop::collection::vec(1usize..70_000, 0..8),
        ) {
            let piece_size = piece_kib * 1024;
            let len = len.min(piece_size as usize);
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut hasher = PieceHasher::new(piece_size);
            let mut rest = &bytes[..];
            for cut in cuts {
                let (now, later) = rest.split_at(cut.min(rest.len()));
                hasher.update(now);
                rest = later;
            }
            hasher.update(rest);
            prop_assert_eq!(hasher.finish(), by_rule(piece_size, &bytes));
            // The hasher starts afresh after finishing, and its list is the chunks' digests.
            hasher.update(&bytes);
            let list = hasher.finish_chunks();
            let chunks: Vec<Digest> = bytes.chunks(chunk_bytes(piece_size) as usize).map(Digest::of).collect();
            prop_assert_eq!(piece_digest_of_chunks(&list), by_rule(piece_size, &bytes));
            prop_assert_eq!(list, chunks);
        }
    }
}
