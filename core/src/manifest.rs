//! `Manifest`: what an item is (name, length, piece size, the digest of every piece, and for a
//! directory its file list) and the `FileId` derived from it. A piece's digest is SHA-256 of
//! its chunks' SHA-256 digests ([`PieceHasher`]).
//!
//! A manifest that exists has been validated: its name (and every path of a directory's tree,
//! see [`TreeEntry`]) cannot escape a download folder, its piece size is in range, and its hash count
//! matches its length. The id is SHA-256 of the canonical CBOR encoding (fields in declaration
//! order, digests as byte strings), so the same bytes and piece size give the same id on every
//! machine. A single file's manifest has no `tree` field at all, so its encoding and id do not
//! depend on directory support.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bitfield::Bitfield;
use crate::error::ManifestError;
use crate::ids::{ChunkIndex, Digest, FileId, PieceIndex};
use crate::limits::{
    BLOCKS_PER_CHUNK_MAX, BLOCK_BYTES, FILE_NAME_BYTES_MAX, PIECES_AUTO_TARGET_COUNT, PIECES_MAX, PIECE_BYTES_AUTO_MAX,
    PIECE_BYTES_AUTO_MIN, PIECE_BYTES_MAX, PIECE_BYTES_MIN,
};

mod digest;
mod tree;

use digest::for_each_unit;
pub use digest::{chunk_bytes, piece_digest, piece_digest_of_chunks, PieceHasher};
use tree::Tree;
pub use tree::{FileSpan, TreeEntry};

/// A validated description of a file or a directory tree. Build one with [`Manifest::new`],
/// [`Manifest::new_tree`] or [`ManifestBuilder`]; decode one with [`Manifest::from_cbor`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawManifest")]
pub struct Manifest {
    name: String,
    length_bytes: u64,
    piece_size_bytes: u32,
    /// Shared by every copy: a simulated swarm holds one manifest per peer.
    piece_hashes: Arc<[Digest]>,
    /// A directory's files and empty directories; absent for a single file.
    #[serde(skip_serializing_if = "Option::is_none")]
    tree: Option<Arc<Tree>>,
    /// The hash of the fields above, computed once: ids are asked for at every block.
    #[serde(skip)]
    file_id: FileId,
}

/// The unchecked wire form; every decoded manifest passes through [`Manifest::new`].
#[derive(Deserialize)]
struct RawManifest {
    name: String,
    length_bytes: u64,
    piece_size_bytes: u32,
    piece_hashes: Vec<Digest>,
    #[serde(default)]
    tree: Option<Vec<TreeEntry>>,
}

impl Manifest {
    /// A single file's manifest from its parts, checked against every rule.
    pub fn new(
        name: String,
        length_bytes: u64,
        piece_size_bytes: u32,
        piece_hashes: Vec<Digest>,
    ) -> Result<Manifest, ManifestError> {
        Manifest::checked(name, length_bytes, piece_size_bytes, piece_hashes, None)
    }

    /// A directory's manifest: `name` is the directory's, `entries` its files and empty
    /// directories in order (see [`TreeEntry`]), `piece_hashes` over the files' bytes in that order.
    pub fn new_tree(
        name: String,
        entries: Vec<TreeEntry>,
        piece_size_bytes: u32,
        piece_hashes: Vec<Digest>,
    ) -> Result<Manifest, ManifestError> {
        let length_bytes =
            entries.iter().try_fold(0u64, |sum, entry| sum.checked_add(entry.length_bytes().unwrap_or(0)));
        let length_bytes = length_bytes.ok_or_else(|| ManifestError::BadTree("file sizes overflow".into()))?;
        Manifest::checked(name, length_bytes, piece_size_bytes, piece_hashes, Some(entries))
    }

    fn checked(
        name: String,
        length_bytes: u64,
        piece_size_bytes: u32,
        piece_hashes: Vec<Digest>,
        tree: Option<Vec<TreeEntry>>,
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
        let tree = tree.map(|entries| Tree::new(entries, length_bytes)).transpose()?.map(Arc::new);
        let piece_hashes = piece_hashes.into();
        let placeholder = FileId(Digest([0; 32]));
        let mut manifest = Manifest { name, length_bytes, piece_size_bytes, piece_hashes, tree, file_id: placeholder };
        manifest.file_id = FileId(Digest::of(&manifest.to_cbor()));
        Ok(manifest)
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
        self.file_id
    }

    /// The file's or directory's name (a single safe path component).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A directory's files and empty directories, in item order; `None` for a single file.
    pub fn tree(&self) -> Option<&[TreeEntry]> {
        self.tree.as_deref().map(Tree::entries)
    }

    /// Bytes of path text in a directory's tree (0 for a single file).
    pub fn tree_paths_bytes(&self) -> usize {
        self.tree.as_deref().map_or(0, Tree::paths_total_bytes)
    }

    /// The files holding the `len_bytes` bytes at offset `at` of the item, in order (for a
    /// single file: entry 0 at `at`). Empty files and directories hold no bytes and never appear.
    ///
    /// # Panics
    /// When the range does not lie inside the item (a caller's bug: pieces and blocks are
    /// checked against the manifest first).
    pub fn spans(&self, at: u64, len_bytes: u64) -> impl Iterator<Item = FileSpan> + '_ {
        let end = at.checked_add(len_bytes).filter(|end| *end <= self.length_bytes);
        assert!(end.is_some(), "{len_bytes} bytes at {at} lie outside an item of {} bytes", self.length_bytes);
        let single = self.tree.is_none() && len_bytes > 0;
        let single = single.then_some(FileSpan { entry: 0, offset_bytes: at, len_bytes });
        let tree = self.tree.as_deref().map(|tree| tree.spans(at, len_bytes));
        single.into_iter().chain(tree.into_iter().flatten())
    }

    /// The item's length in bytes (for a directory, the sum of its files' sizes).
    pub fn length_bytes(&self) -> u64 {
        self.length_bytes
    }

    /// The size of every piece but possibly the last.
    pub fn piece_size_bytes(&self) -> u32 {
        self.piece_size_bytes
    }

    /// The size of every block of a chunk but possibly its last: [`BLOCK_BYTES`], a whole chunk
    /// if chunks are smaller, or a [`BLOCKS_PER_CHUNK_MAX`]th of a chunk if chunks are larger
    /// than that many blocks.
    pub fn block_bytes(&self) -> u32 {
        let chunk_bytes = self.chunk_bytes();
        BLOCK_BYTES.max(chunk_bytes.div_ceil(BLOCKS_PER_CHUNK_MAX)).min(chunk_bytes)
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

    /// The expected digest of `piece` (see [`PieceHasher`]).
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

    /// The size of every chunk but possibly the last of each piece (see [`chunk_bytes`]).
    pub fn chunk_bytes(&self) -> u32 {
        chunk_bytes(self.piece_size_bytes)
    }

    /// How many chunks every piece but possibly the last has.
    pub fn chunks_per_piece(&self) -> u32 {
        self.piece_size_bytes / self.chunk_bytes()
    }

    /// Number of chunks: chunk boundaries fall on piece boundaries, since a chunk size divides
    /// the piece size (both are powers of two).
    pub fn chunk_count(&self) -> u32 {
        // At most CHUNKS_PER_PIECE_MAX chunks for each of at most PIECES_MAX pieces: a u32.
        self.length_bytes.div_ceil(u64::from(self.chunk_bytes())) as u32
    }

    /// The chunk `index` if it exists in this file.
    pub fn chunk(&self, index: u32) -> Option<ChunkIndex> {
        (index < self.chunk_count()).then_some(ChunkIndex(index))
    }

    /// Every chunk of the file, in order.
    pub fn chunks(&self) -> impl Iterator<Item = ChunkIndex> {
        (0..self.chunk_count()).map(ChunkIndex)
    }

    /// Byte offset of `chunk` in the file.
    pub fn chunk_offset(&self, chunk: ChunkIndex) -> u64 {
        u64::from(chunk.0) * u64::from(self.chunk_bytes())
    }

    /// Length of `chunk` in bytes (the last chunk of the file may be short).
    pub fn chunk_len(&self, chunk: ChunkIndex) -> u32 {
        let rest = self.length_bytes - self.chunk_offset(chunk);
        // rest >= 1 for an existing chunk and is capped by the chunk size.
        rest.min(u64::from(self.chunk_bytes())) as u32
    }

    /// The piece `chunk` is part of.
    pub fn piece_of(&self, chunk: ChunkIndex) -> PieceIndex {
        PieceIndex(chunk.0 / self.chunks_per_piece())
    }

    /// The place of `chunk` in its piece's list of chunk digests.
    pub fn place_in_piece(&self, chunk: ChunkIndex) -> usize {
        (chunk.0 % self.chunks_per_piece()) as usize
    }

    /// The chunks of `piece`, in order.
    pub fn chunks_of(&self, piece: PieceIndex) -> impl Iterator<Item = ChunkIndex> {
        let first = piece.0 * self.chunks_per_piece();
        let end = (first + self.chunks_per_piece()).min(self.chunk_count());
        (first..end).map(ChunkIndex)
    }

    /// Whether `digests` are the chunk digests of `piece`: as many as it has chunks, hashing
    /// together to the piece's digest in the manifest.
    pub fn is_chunk_list(&self, piece: PieceIndex, digests: &[Digest]) -> bool {
        digests.len() == self.chunks_of(piece).count() && piece_digest_of_chunks(digests) == self.piece_hash(piece)
    }

    /// The pieces held whole in `chunks`, a bitfield over this file's chunks.
    pub fn whole_pieces<'a>(&self, chunks: &'a Bitfield) -> impl Iterator<Item = PieceIndex> + 'a {
        chunks.whole_groups(self.chunks_per_piece()).map(PieceIndex)
    }
}

impl TryFrom<RawManifest> for Manifest {
    type Error = ManifestError;
    fn try_from(raw: RawManifest) -> Result<Manifest, ManifestError> {
        Manifest::checked(raw.name, raw.length_bytes, raw.piece_size_bytes, raw.piece_hashes, raw.tree)
    }
}

/// A manifest with the digests of all its chunks, in order, as describing the bytes computes
/// them: whoever described a file serves each piece's chunk list without reading it again.
#[derive(Clone, Debug)]
pub struct Described {
    /// The manifest.
    pub manifest: Manifest,
    /// The digest of every chunk, in chunk order.
    pub chunk_digests: Vec<Digest>,
}

/// Computes a manifest from a file's bytes fed in order, piece by piece or in any chunks (for a
/// directory: its files' bytes in the order of its tree).
#[derive(Debug)]
pub struct ManifestBuilder {
    name: String,
    tree: Option<Vec<TreeEntry>>,
    piece_size_bytes: u32,
    length_bytes: u64,
    current: PieceHasher,
    current_len: u32,
    hashes: Vec<Digest>,
    /// Every finished chunk's digest (32 bytes a chunk, at most [`crate::limits::CHUNKS_MAX`]).
    chunk_digests: Vec<Digest>,
}

impl ManifestBuilder {
    /// Starts a manifest for a file called `name` cut into pieces of `piece_size_bytes`.
    pub fn new(name: String, piece_size_bytes: u32) -> Result<ManifestBuilder, ManifestError> {
        check_name(&name)?;
        check_piece_size(u64::from(piece_size_bytes))?;
        Ok(ManifestBuilder {
            name,
            tree: None,
            piece_size_bytes,
            length_bytes: 0,
            current: PieceHasher::new(piece_size_bytes),
            current_len: 0,
            hashes: Vec::new(),
            chunk_digests: Vec::new(),
        })
    }

    /// Starts a manifest for the directory `name` holding `entries` (in the order of
    /// [`Manifest::tree`]); the files' bytes are fed in that order.
    pub fn new_tree(
        name: String,
        entries: Vec<TreeEntry>,
        piece_size_bytes: u32,
    ) -> Result<ManifestBuilder, ManifestError> {
        let mut builder = ManifestBuilder::new(name, piece_size_bytes)?;
        builder.tree = Some(entries);
        Ok(builder)
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        self.length_bytes += bytes.len() as u64;
        let mut current_len = self.current_len;
        for_each_unit(bytes, self.piece_size_bytes, &mut current_len, |now, full| {
            self.current.update(now);
            if full {
                self.finish_piece();
            }
        });
        self.current_len = current_len;
    }

    /// The manifest of everything fed so far.
    pub fn finish(self) -> Result<Manifest, ManifestError> {
        self.describe().map(|described| described.manifest)
    }

    /// The manifest of everything fed so far, with its chunks' digests.
    pub fn describe(mut self) -> Result<Described, ManifestError> {
        if self.current_len > 0 {
            self.finish_piece();
        }
        let manifest = match self.tree {
            None => Manifest::new(self.name, self.length_bytes, self.piece_size_bytes, self.hashes)?,
            Some(entries) => {
                let manifest = Manifest::new_tree(self.name, entries, self.piece_size_bytes, self.hashes)?;
                if manifest.length_bytes != self.length_bytes {
                    let (listed, fed) = (manifest.length_bytes, self.length_bytes);
                    return Err(ManifestError::BadTree(format!("{fed} bytes fed for files of {listed} bytes")));
                }
                manifest
            }
        };
        Ok(Described { manifest, chunk_digests: self.chunk_digests })
    }

    fn finish_piece(&mut self) {
        let chunks = self.current.finish_chunks();
        self.hashes.push(piece_digest_of_chunks(&chunks));
        self.chunk_digests.extend(chunks);
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
pub(crate) fn check_name(name: &str) -> Result<(), ManifestError> {
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
    use crate::limits::{BLOCK_BYTES_MAX, CHUNKS_PER_PIECE_MAX};

    fn build(bytes: &[u8], piece: u32) -> Manifest {
        let mut builder = ManifestBuilder::new("f.bin".into(), piece).expect("valid");
        builder.update(bytes);
        builder.finish().expect("valid")
    }

    #[test]
    fn blocks_are_the_block_size_at_most_a_chunk_and_at_most_a_64th_of_one() {
        let block = |piece| build(b"x", piece).block_bytes();
        assert_eq!(block(PIECE_BYTES_MIN), PIECE_BYTES_MIN.min(BLOCK_BYTES));
        assert_eq!(block(256 * 1024), 64 * 1024, "a chunk of a quarter piece");
        assert_eq!(block(BLOCK_BYTES * CHUNKS_PER_PIECE_MAX), BLOCK_BYTES);
        assert_eq!(block(PIECE_BYTES_MAX), BLOCK_BYTES_MAX);
        let largest_chunk = chunk_bytes(PIECE_BYTES_MAX);
        assert!(largest_chunk.div_ceil(BLOCK_BYTES_MAX) <= BLOCKS_PER_CHUNK_MAX, "the largest chunk fits a mask");
    }

    #[test]
    fn chunks_cut_pieces_and_the_file_in_order() {
        let bytes = vec![5u8; 256 * 1024 * 2 + 70 * 1024];
        let manifest = build(&bytes, 256 * 1024);
        assert_eq!((manifest.piece_count(), manifest.chunk_count(), manifest.chunks_per_piece()), (3, 10, 4));
        let last_piece: Vec<_> = manifest.chunks_of(PieceIndex(2)).collect();
        assert_eq!(last_piece, [ChunkIndex(8), ChunkIndex(9)]);
        assert_eq!(manifest.chunk_len(ChunkIndex(9)), 6 * 1024);
        assert_eq!(manifest.piece_of(ChunkIndex(9)), PieceIndex(2));
        assert_eq!(manifest.place_in_piece(ChunkIndex(9)), 1);
        let list: Vec<Digest> = bytes[512 * 1024..].chunks(64 * 1024).map(Digest::of).collect();
        assert!(manifest.is_chunk_list(PieceIndex(2), &list));
        assert!(!manifest.is_chunk_list(PieceIndex(2), &list[..1]));
        assert!(!manifest.is_chunk_list(PieceIndex(1), &list));
        let mut held = Bitfield::new(10);
        for chunk in [0, 1, 2, 3, 4, 8, 9] {
            held.set(ChunkIndex(chunk));
        }
        let whole: Vec<_> = manifest.whole_pieces(&held).collect();
        assert_eq!(whole, [PieceIndex(0), PieceIndex(2)]);
    }

    #[test]
    fn describing_keeps_every_chunks_digest() {
        let bytes: Vec<u8> = (0..256 * 1024 * 2 + 70 * 1024).map(|i: u32| (i % 249) as u8).collect();
        let mut builder = ManifestBuilder::new("f.bin".into(), 256 * 1024).expect("valid");
        for part in bytes.chunks(10_000) {
            builder.update(part);
        }
        let described = builder.describe().expect("valid");
        let chunks: Vec<Digest> = bytes.chunks(64 * 1024).map(Digest::of).collect();
        assert_eq!(described.chunk_digests, chunks);
        assert_eq!(described.manifest, build(&bytes, 256 * 1024));
        assert!(described.manifest.is_chunk_list(PieceIndex(2), &chunks[8..]));
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
        assert_eq!(whole.file_id(), FileId(Digest::of(&whole.to_cbor())), "the id is the encoding's hash");
        let decoded = Manifest::from_cbor(&whole.to_cbor()).expect("decodes");
        assert_eq!((decoded.file_id(), &decoded), (whole.file_id(), &whole));
        assert_eq!(whole.piece_count(), 7);
        assert_eq!(whole.piece_len(PieceIndex(6)), 100_000 - 6 * 16 * 1024);
        assert_eq!(whole.piece_hash(PieceIndex(0)), piece_digest(16 * 1024, &bytes[..16 * 1024]));
        assert_eq!(whole.piece_hash(PieceIndex(6)), piece_digest(16 * 1024, &bytes[6 * 16 * 1024..]));
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

    fn tree_entries() -> Vec<TreeEntry> {
        let path = |text: &str| text.split('/').map(str::to_owned).collect::<Vec<_>>();
        vec![
            TreeEntry::file(path("a/b/one.bin"), 20_000),
            TreeEntry::file(path("a/empty.txt"), 0),
            TreeEntry::empty_dir(path("a/nothing")),
            TreeEntry::file(path("z.bin"), 30_000),
        ]
    }

    #[test]
    fn a_single_file_encodes_without_a_tree_and_keeps_its_id() {
        let manifest = build(b"hello world", 16 * 1024);
        assert!(manifest.tree().is_none());
        let bytes = manifest.to_cbor();
        assert_eq!(bytes[0], 0xa4, "a map of exactly four fields");
        assert!(!bytes.windows(4).any(|w| w == b"tree"));
        // The id of these bytes, pinned: the encoding and the digest rule (protocol version 5)
        // change only on purpose, and a single file's id does not depend on directory support.
        assert_eq!(manifest.file_id().to_string(), "328a3fda9f93aadd5ad4f50fc5793dfea938fc684066248371c25623bfb318bd");
    }

    #[test]
    fn a_directory_round_trips_and_maps_pieces_across_its_files() {
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 249) as u8).collect();
        let mut builder = ManifestBuilder::new_tree("dir".into(), tree_entries(), 16 * 1024).expect("valid");
        builder.update(&bytes);
        let manifest = builder.finish().expect("valid");
        assert_eq!((manifest.length_bytes(), manifest.piece_count()), (50_000, 4));
        let decoded = Manifest::from_cbor(&manifest.to_cbor()).expect("round trip");
        assert_eq!(decoded, manifest);
        assert_ne!(decoded.file_id(), build(&bytes, 16 * 1024).file_id(), "the tree is part of the id");
        // Piece 1 is bytes 16384..32768: the end of one.bin, then the start of z.bin.
        let spans: Vec<FileSpan> = manifest.spans(manifest.piece_offset(PieceIndex(1)), 16_384).collect();
        assert_eq!(
            spans,
            vec![
                FileSpan { entry: 0, offset_bytes: 16_384, len_bytes: 3_616 },
                FileSpan { entry: 3, offset_bytes: 0, len_bytes: 12_768 },
            ]
        );
        let single = build(&bytes, 16 * 1024);
        assert_eq!(
            single.spans(100, 5).collect::<Vec<_>>(),
            vec![FileSpan { entry: 0, offset_bytes: 100, len_bytes: 5 }]
        );
    }

    #[test]
    fn a_fed_length_that_differs_from_the_tree_is_refused() {
        let mut builder = ManifestBuilder::new_tree("dir".into(), tree_entries(), 16 * 1024).expect("valid");
        builder.update(&[0u8; 49_999]);
        assert!(matches!(builder.finish(), Err(ManifestError::BadTree(_))), "one byte short, same piece count");
        let mut builder = ManifestBuilder::new_tree("dir".into(), tree_entries(), 16 * 1024).expect("valid");
        builder.update(&[0u8; 100]);
        assert!(builder.finish().is_err(), "pieces missing");
    }

    /// What a remote could send: any name, length and tree, bypassing the constructors.
    #[derive(Serialize)]
    struct Forged {
        name: String,
        length_bytes: u64,
        piece_size_bytes: u32,
        piece_hashes: Vec<Digest>,
        tree: Vec<TreeEntry>,
    }

    #[test]
    fn a_decoded_tree_whose_paths_escape_is_refused() {
        for escape in [&["..", "etc", "passwd"][..], &["/etc"], &["a", "..", "..", "x"], &[""], &["a/b"]] {
            let forged = Forged {
                name: "dir".into(),
                length_bytes: 1,
                piece_size_bytes: 16 * 1024,
                piece_hashes: vec![Digest([0; 32])],
                tree: vec![TreeEntry::file(escape.iter().map(|c| (*c).to_owned()).collect(), 1)],
            };
            let mut bytes = Vec::new();
            ciborium::into_writer(&forged, &mut bytes).expect("encode");
            let decoded = Manifest::from_cbor(&bytes);
            assert!(matches!(&decoded, Err(ManifestError::Decode(e)) if e.contains("tree")), "{escape:?}: {decoded:?}");
        }
    }

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        prop_oneof![arb_file_manifest(), arb_tree_manifest()]
    }

    fn arb_file_manifest() -> impl Strategy<Value = Manifest> {
        ("[a-zA-Z0-9_-][a-zA-Z0-9._ -]{0,39}", 0u64..300_000, 14u32..=16).prop_flat_map(|(name, len, shift)| {
            let piece = 1u32 << shift;
            let count = len.div_ceil(u64::from(piece)) as usize;
            proptest::collection::vec(any::<[u8; 32]>().prop_map(Digest), count)
                .prop_map(move |hashes| Manifest::new(name.clone(), len, piece, hashes).expect("a valid manifest"))
        })
    }

    /// A directory of up to five files in a folder and five at the top (a map keeps the paths
    /// sorted and unique).
    fn arb_tree_manifest() -> impl Strategy<Value = Manifest> {
        let files = || proptest::collection::btree_map("[a-z]{1,8}", 0u64..60_000, 0..5);
        (files(), files()).prop_flat_map(|(inner, top)| {
            let inside = inner.into_iter().map(|(name, len)| TreeEntry::file(vec!["d".to_owned(), name], len));
            let outside = top.into_iter().map(|(name, len)| TreeEntry::file(vec![format!("e{name}")], len));
            let entries: Vec<TreeEntry> = inside.chain(outside).collect();
            let len: u64 = entries.iter().filter_map(TreeEntry::length_bytes).sum();
            let count = len.div_ceil(16_384) as usize;
            proptest::collection::vec(any::<[u8; 32]>().prop_map(Digest), count).prop_map(move |hashes| {
                Manifest::new_tree("dir".into(), entries.clone(), 16_384, hashes).expect("a valid manifest")
            })
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
                    let (name, piece_size) = (decoded.name().to_owned(), decoded.piece_size_bytes());
                    let hashes = decoded.pieces().map(|p| decoded.piece_hash(p)).collect();
                    let checked = match decoded.tree() {
                        None => Manifest::new(name, decoded.length_bytes(), piece_size, hashes),
                        Some(tree) => Manifest::new_tree(name, tree.to_vec(), piece_size, hashes),
                    };
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
