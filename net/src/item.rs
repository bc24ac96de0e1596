//! The bytes of an item on disk: one file (a shared file, a finished one, or any download's
//! `.part`), or the files of a directory tree, read and hashed across file boundaries.
//!
//! A tree's files are opened for each access rather than kept open: a tree may list more
//! files than a process may hold open, and a block read costs one open per file it touches.
//! Opening checks every file of the tree is there with its listed size, so a tree that changed
//! is refused at once rather than served short.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use p2p_core::{Digest, Manifest, PieceHasher, StoreError};
use sha2::Digest as _;

use crate::error::{store_io, NetError};
use crate::hasher::feed_range;
use crate::tree::join;

/// Where an item's bytes are.
#[derive(Debug)]
pub enum ItemFiles {
    /// One open file.
    File {
        /// The file.
        file: File,
        /// Its path, for errors.
        path: PathBuf,
    },
    /// The files of a directory, in the order of its manifest's tree.
    Tree {
        /// The directory.
        root: PathBuf,
        /// Its manifest, which maps item offsets to files.
        manifest: Arc<Manifest>,
    },
}

impl ItemFiles {
    /// The item `manifest` describes at `path`, checked to have the manifest's sizes.
    pub fn open(path: &Path, manifest: &Manifest) -> Result<ItemFiles, NetError> {
        let changed = |what: &Path, length: u64, expected: u64| NetError::Corrupt {
            path: what.to_owned(),
            reason: format!("changed while being shared ({length} bytes, {expected} expected)"),
        };
        let Some(tree) = manifest.tree() else {
            let file = File::open(path).map_err(NetError::io("open", path))?;
            let length = file.metadata().map_err(NetError::io("inspect", path))?.len();
            if length != manifest.length_bytes() {
                return Err(changed(path, length, manifest.length_bytes()));
            }
            return Ok(ItemFiles::File { file, path: path.to_owned() });
        };
        for entry in tree {
            let at = join(path, entry);
            let metadata = std::fs::metadata(&at).map_err(NetError::io("inspect", &at))?;
            match entry.length_bytes() {
                Some(expected) if !metadata.is_file() || metadata.len() != expected => {
                    return Err(changed(&at, metadata.len(), expected));
                }
                None if !metadata.is_dir() => {
                    let reason = "changed while being shared (no longer a directory)".to_owned();
                    return Err(NetError::Corrupt { path: at, reason });
                }
                _ => {}
            }
        }
        Ok(ItemFiles::Tree { root: path.to_owned(), manifest: Arc::new(manifest.clone()) })
    }

    /// A download's `.part`, open for reading and writing.
    pub fn part(file: File, path: &Path) -> ItemFiles {
        ItemFiles::File { file, path: path.to_owned() }
    }

    /// Writes `bytes` at item offset `at` (only a single file, a download's `.part`, is written).
    pub fn write_all_at(&self, bytes: &[u8], at: u64) -> Result<(), StoreError> {
        match self {
            ItemFiles::File { file, path } => file.write_all_at(bytes, at).map_err(store_io("write", path)),
            ItemFiles::Tree { .. } => Err(StoreError::NotDownloading),
        }
    }

    /// The digest of the piece of `len` bytes at item offset `at`, of a manifest whose pieces are
    /// `piece_size_bytes` (see [`p2p_core::PieceHasher`]).
    pub fn piece_digest(&self, at: u64, len: u64, piece_size_bytes: u32) -> Result<Digest, StoreError> {
        let mut hasher = PieceHasher::new(piece_size_bytes);
        self.feed(&mut |bytes| hasher.update(bytes), at, len)?;
        Ok(hasher.finish())
    }

    /// The SHA-256 digest of the `len` bytes at item offset `at` (a chunk's).
    pub fn digest(&self, at: u64, len: u64) -> Result<Digest, StoreError> {
        let mut hasher = sha2::Sha256::new();
        self.feed(&mut |bytes| hasher.update(bytes), at, len)?;
        Ok(Digest(hasher.finalize().into()))
    }

    /// Feeds the `len` bytes at item offset `at` to `feed`, a directory's file by file.
    fn feed(&self, feed: &mut impl FnMut(&[u8]), at: u64, len: u64) -> Result<(), StoreError> {
        match self {
            ItemFiles::File { file, path } => feed_range(feed, file, at, len, path),
            ItemFiles::Tree { root, manifest } => {
                for span in manifest.spans(at, len) {
                    let (file, path) = open_entry(root, manifest, span.entry)?;
                    feed_range(feed, &file, span.offset_bytes, span.len_bytes, &path)?;
                }
                Ok(())
            }
        }
    }

    /// `len` bytes at item offset `at` (at most a block: callers check it).
    pub fn read(&self, len: usize, at: u64) -> Result<Bytes, StoreError> {
        match self {
            ItemFiles::File { file, path } => read_exact_at(file, len, at).map_err(store_io("read", path)),
            ItemFiles::Tree { root, manifest } => {
                let mut buffer = vec![0u8; len];
                let mut filled = 0usize;
                // `len` is a block, so every span's length fits in usize.
                for span in manifest.spans(at, len as u64) {
                    let (file, path) = open_entry(root, manifest, span.entry)?;
                    let into = &mut buffer[filled..filled + span.len_bytes as usize];
                    file.read_exact_at(into, span.offset_bytes).map_err(store_io("read", &path))?;
                    filled += into.len();
                }
                Ok(Bytes::from(buffer))
            }
        }
    }
}

fn open_entry(root: &Path, manifest: &Manifest, entry: usize) -> Result<(File, PathBuf), StoreError> {
    let tree = manifest.tree().unwrap_or_default();
    let path = join(root, &tree[entry]);
    let file = File::open(&path).map_err(store_io("open", &path))?;
    Ok((file, path))
}

/// Reads `len` bytes of `file` at `offset` into a new buffer that is not zeroed first (the read
/// fills it; a block read is on every served byte's path).
fn read_exact_at(file: &File, len: usize, offset: u64) -> std::io::Result<Bytes> {
    let mut buffer = Vec::with_capacity(len);
    while buffer.len() < len {
        let at = offset + buffer.len() as u64;
        if rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buffer), at)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    // The spare capacity may have been larger than the block.
    buffer.truncate(len);
    Ok(Bytes::from(buffer))
}

/// The size and modification time of the item at `path` as one stamp: for a file its length
/// and time in nanoseconds since the Unix epoch; for a directory the item's length and a digest
/// of every file's size and time (any file touched changes it). `None` when a file is missing,
/// or a directory's file no longer has its listed size.
pub fn stamp(path: &Path, manifest: &Manifest) -> Option<(u64, u128)> {
    let Some(tree) = manifest.tree() else {
        let metadata = std::fs::metadata(path).ok().filter(std::fs::Metadata::is_file)?;
        return Some((metadata.len(), modified_ns(&metadata)));
    };
    let mut hasher = sha2::Sha256::new();
    let mut length = 0u64;
    for entry in tree {
        let Some(listed) = entry.length_bytes() else { continue };
        let metadata = std::fs::metadata(join(path, entry)).ok().filter(|m| m.is_file() && m.len() == listed)?;
        length += metadata.len();
        hasher.update(metadata.len().to_be_bytes());
        hasher.update(modified_ns(&metadata).to_be_bytes());
    }
    let digest: [u8; 32] = hasher.finalize().into();
    let mut folded = [0u8; 16];
    folded.copy_from_slice(&digest[..16]);
    Some((length, u128::from_be_bytes(folded)))
}

fn modified_ns(metadata: &std::fs::Metadata) -> u128 {
    // A file system without modification times reads as 0: every restart then re-hashes.
    metadata.modified().ok().and_then(|at| at.duration_since(UNIX_EPOCH).ok()).map_or(0, |since| since.as_nanos())
}
