//! `Manifest`: what a file is (name, length, piece size, SHA-256 of every piece) and the
//! `FileId` derived from it.
//!
//! A manifest that exists has been validated: its name cannot escape a download folder, its piece
//! size is in range, and its hash count matches its length. The id is SHA-256 of the canonical
//! CBOR encoding (fields in declaration order, digests as byte strings), so the same bytes and
//! piece size give the same id on every machine.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ManifestError;
use crate::ids::{Digest, FileId, PieceIndex};
use crate::limits::{
    FILE_NAME_BYTES_MAX, PIECES_AUTO_TARGET_COUNT, PIECES_MAX, PIECE_BYTES_AUTO_MAX, PIECE_BYTES_AUTO_MIN,
    PIECE_BYTES_MAX, PIECE_BYTES_MIN,
};

/// A validated description of a file. Build one with [`Manifest::new`] or
/// [`ManifestBuilder`]; decode one with [`Manifest::from_cbor`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawManifest")]
pub struct Manifest {
    name: String,
    length_bytes: u64,
    piece_size_bytes: u32,
    /// Shared by every copy: a simulated swarm holds one manifest per peer.
    piece_hashes: Arc<[Digest]>,
}

/// The unchecked wire form; every decoded manifest passes through [`Manifest::new`].
#[derive(Deserialize)]
struct RawManifest {
    name: String,
    length_bytes: u64,
    piece_size_bytes: u32,
    piece_hashes: Vec<Digest>,
}

impl Manifest {
    /// A manifest from its parts, checked against every rule.
    pub fn new(
        name: String,
        length_bytes: u64,
        piece_size_bytes: u32,
        piece_hashes: Vec<Digest>,
    ) -> Result<Manifest, ManifestError> {
        check_name(&name)?;
        check_piece_size(u64::from(piece_size_bytes))?;
        let expected = piece_count_for(length_bytes, piece_size_bytes);
        if expected > u64::from(PIECES_MAX) {
            return Err(ManifestError::TooManyPieces(expected));
        }
        if piece_hashes.len() as u64 != expected {
            return Err(ManifestError::PieceCount { hashes: piece_hashes.len(), expected });
        }
        Ok(Manifest { name, length_bytes, piece_size_bytes, piece_hashes: piece_hashes.into() })
    }

    /// Decodes and validates a manifest from its CBOR encoding.
    pub fn from_cbor(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        ciborium::from_reader(bytes).map_err(|e| ManifestError::Decode(e.to_string()))
    }

    /// The canonical CBOR encoding: the bytes the [`FileId`] is the hash of.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.piece_hashes.len() * 34);
        // Writing into a Vec cannot fail and every field is a plain value.
        ciborium::into_writer(self, &mut out).expect("manifest encodes to a Vec");
        out
    }

    /// The file's id.
    pub fn file_id(&self) -> FileId {
        FileId(Digest::of(&self.to_cbor()))
    }

    /// The file name (a single safe path component).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file length in bytes.
    pub fn length_bytes(&self) -> u64 {
        self.length_bytes
    }

    /// The size of every piece but possibly the last.
    pub fn piece_size_bytes(&self) -> u32 {
        self.piece_size_bytes
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        // Bounded by PIECES_MAX at construction.
        self.piece_hashes.len() as u32
    }

    /// The piece `index` if it exists in this file.
    pub fn piece(&self, index: u32) -> Option<PieceIndex> {
        (index < self.piece_count()).then_some(PieceIndex(index))
    }

    /// Every piece of the file, in order.
    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> {
        (0..self.piece_count()).map(PieceIndex)
    }

    /// The expected SHA-256 of `piece`.
    pub fn piece_hash(&self, piece: PieceIndex) -> Digest {
        self.piece_hashes[piece.as_usize()]
    }

    /// Byte offset of `piece` in the file.
    pub fn piece_offset(&self, piece: PieceIndex) -> u64 {
        u64::from(piece.0) * u64::from(self.piece_size_bytes)
    }

    /// Length of `piece` in bytes (the last piece may be short).
    pub fn piece_len(&self, piece: PieceIndex) -> u32 {
        let rest = self.length_bytes - self.piece_offset(piece);
        // rest >= 1 for an existing piece and is capped by the piece size.
        rest.min(u64::from(self.piece_size_bytes)) as u32
    }
}

impl TryFrom<RawManifest> for Manifest {
    type Error = ManifestError;
    fn try_from(raw: RawManifest) -> Result<Manifest, ManifestError> {
        Manifest::new(raw.name, raw.length_bytes, raw.piece_size_bytes, raw.piece_hashes)
    }
}

/// Computes a manifest from a file's bytes fed in order, piece by piece or in any chunks.
#[derive(Debug)]
pub struct ManifestBuilder {
    name: String,
    piece_size_bytes: u32,
    length_bytes: u64,
    current: sha2::Sha256,
    current_len: u32,
    hashes: Vec<Digest>,
}

impl ManifestBuilder {
    /// Starts a manifest for a file called `name` cut into pieces of `piece_size_bytes`.
    pub fn new(name: String, piece_size_bytes: u32) -> Result<ManifestBuilder, ManifestError> {
        check_name(&name)?;
        check_piece_size(u64::from(piece_size_bytes))?;
        Ok(ManifestBuilder {
            name,
            piece_size_bytes,
            length_bytes: 0,
            current: Default::default(),
            current_len: 0,
            hashes: Vec::new(),
        })
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut bytes: &[u8]) {
        use sha2::Digest as _;
        while !bytes.is_empty() {
            let room = (self.piece_size_bytes - self.current_len) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.current.update(now);
            self.current_len += now.len() as u32;
            self.length_bytes += now.len() as u64;
            bytes = rest;
            if self.current_len == self.piece_size_bytes {
                self.finish_piece();
            }
        }
    }

    /// The manifest of everything fed so far.
    pub fn finish(mut self) -> Result<Manifest, ManifestError> {
        if self.current_len > 0 {
            self.finish_piece();
        }
        Manifest::new(self.name, self.length_bytes, self.piece_size_bytes, self.hashes)
    }

    fn finish_piece(&mut self) {
        use sha2::Digest as _;
        let hasher = std::mem::take(&mut self.current);
        self.hashes.push(Digest(hasher.finalize().into()));
        self.current_len = 0;
    }
}

/// The default piece size for a file of `length_bytes`: a power of two between 256 KiB and
/// 4 MiB giving about [`PIECES_AUTO_TARGET_COUNT`] pieces or fewer.
pub fn auto_piece_size(length_bytes: u64) -> u32 {
    let wanted = length_bytes.div_ceil(PIECES_AUTO_TARGET_COUNT).next_power_of_two();
    // Clamped into the u32 range of the auto bounds.
    wanted.clamp(u64::from(PIECE_BYTES_AUTO_MIN), u64::from(PIECE_BYTES_AUTO_MAX)) as u32
}

/// Checks a user-supplied piece size (for `--piece-size`).
pub fn check_piece_size(piece_size_bytes: u64) -> Result<u32, ManifestError> {
    if piece_size_bytes < u64::from(PIECE_BYTES_MIN)
        || piece_size_bytes > u64::from(PIECE_BYTES_MAX)
        || !piece_size_bytes.is_power_of_two()
    {
        return Err(ManifestError::BadPieceSize(piece_size_bytes));
    }
    Ok(piece_size_bytes as u32)
}

fn piece_count_for(length_bytes: u64, piece_size_bytes: u32) -> u64 {
    length_bytes.div_ceil(u64::from(piece_size_bytes))
}

/// A name is one plain path component on every platform: it cannot be empty, `.` or `..`,
/// contain a separator, a drive colon or a control character, or exceed the length limit.
fn check_name(name: &str) -> Result<(), ManifestError> {
    let bad = name.is_empty()
        || name.len() > FILE_NAME_BYTES_MAX
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == '\\' || c == ':' || c.is_control());
    if bad {
        return Err(ManifestError::BadName(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn build(bytes: &[u8], piece: u32) -> Manifest {
        let mut builder = ManifestBuilder::new("f.bin".into(), piece).expect("valid");
        builder.update(bytes);
        builder.finish().expect("valid")
    }

    #[test]
    fn same_bytes_same_id_whatever_the_chunking() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let whole = build(&bytes, 16 * 1024);
        let mut builder = ManifestBuilder::new("f.bin".into(), 16 * 1024).expect("valid");
        for chunk in bytes.chunks(999) {
            builder.update(chunk);
        }
        let chunked = builder.finish().expect("valid");
        assert_eq!(whole.file_id(), chunked.file_id());
        assert_eq!(whole.piece_count(), 7);
        assert_eq!(whole.piece_len(PieceIndex(6)), 100_000 - 6 * 16 * 1024);
        assert_eq!(whole.piece_hash(PieceIndex(0)), Digest::of(&bytes[..16 * 1024]));
        assert_ne!(whole.file_id(), build(&bytes, 32 * 1024).file_id(), "piece size is part of the id");
    }

    #[test]
    fn cbor_round_trip_keeps_the_id() {
        let manifest = build(b"hello world", 16 * 1024);
        let decoded = Manifest::from_cbor(&manifest.to_cbor()).expect("round trip");
        assert_eq!(decoded, manifest);
        assert_eq!(decoded.file_id(), manifest.file_id());
    }

    #[test]
    fn rejects_names_that_escape_and_inconsistent_counts() {
        for name in ["", ".", "..", "a/b", "..\\x", "c:evil", "nul\0"] {
            assert!(matches!(Manifest::new(name.into(), 0, 16384, vec![]), Err(ManifestError::BadName(_))), "{name:?}");
        }
        assert!(matches!(Manifest::new("a".into(), 1, 16384, vec![]), Err(ManifestError::PieceCount { .. })));
        assert!(matches!(Manifest::new("a".into(), 1, 1000, vec![]), Err(ManifestError::BadPieceSize(1000))));
        assert!(Manifest::from_cbor(b"\xff\x00").is_err());
    }

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        ("[a-zA-Z0-9_-][a-zA-Z0-9._ -]{0,39}", 0u64..300_000, 14u32..=16).prop_flat_map(|(name, len, shift)| {
            let piece = 1u32 << shift;
            let count = len.div_ceil(u64::from(piece)) as usize;
            proptest::collection::vec(any::<[u8; 32]>().prop_map(Digest), count)
                .prop_map(move |hashes| Manifest::new(name.clone(), len, piece, hashes).expect("a valid manifest"))
        })
    }

    proptest! {
        #[test]
        fn every_manifest_round_trips_through_cbor(manifest in arb_manifest()) {
            let decoded = Manifest::from_cbor(&manifest.to_cbor());
            prop_assert_eq!(decoded.as_ref().map(Manifest::file_id), Ok(manifest.file_id()));
            prop_assert_eq!(decoded, Ok(manifest));
        }

        /// Garbage, or a real manifest with bytes flipped or cut, never panics, and whatever
        /// decodes is a valid manifest (so a remote cannot plant an unsafe name or a bad count).
        #[test]
        fn damaged_manifests_never_panic_and_decode_only_valid(
            manifest in arb_manifest(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut bytes = manifest.to_cbor();
            for (at, byte) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            for candidate in [&bytes[..], &garbage[..]] {
                if let Ok(decoded) = Manifest::from_cbor(candidate) {
                    let checked = Manifest::new(
                        decoded.name().to_owned(),
                        decoded.length_bytes(),
                        decoded.piece_size_bytes(),
                        decoded.pieces().map(|p| decoded.piece_hash(p)).collect(),
                    );
                    prop_assert_eq!(checked, Ok(decoded));
                }
            }
        }
    }

    #[test]
    fn auto_piece_size_is_clamped_power_of_two() {
        assert_eq!(auto_piece_size(0), PIECE_BYTES_AUTO_MIN);
        assert_eq!(auto_piece_size(10 * 1024 * 1024), PIECE_BYTES_AUTO_MIN);
        assert_eq!(auto_piece_size(1024 * 1024 * 1024), 1024 * 1024);
        assert_eq!(auto_piece_size(1 << 40), PIECE_BYTES_AUTO_MAX);
    }
}
