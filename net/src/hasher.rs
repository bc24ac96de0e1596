//! SHA-256 work: the digest of a stored piece and describing a whole file or directory by its
//! [`Manifest`].
//!
//! Everything here blocks on disk and CPU, so callers run it on worker threads
//! (`tokio::task::spawn_blocking`), never on the reactor. Files are streamed through a fixed
//! buffer: memory stays flat whatever the file size. `sha2` picks the SHA-NI instructions when
//! the CPU has them.

use std::cell::RefCell;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use p2p_core::{auto_piece_size, Described, Digest, Manifest, ManifestBuilder, PieceHasher, StoreError};

use crate::error::{store_io, NetError};

/// Bytes read from disk at a time while hashing. Every worker thread keeps a buffer of this
/// size, and how many threads a download has started by its peak depends on how long it ran:
/// a small chunk keeps peak memory flat across file sizes. Reading 64 KiB from the page cache
/// costs a few microseconds against about 40 to hash it.
pub const HASH_CHUNK_BYTES: usize = 64 * 1024;

thread_local! {
    /// Each worker thread's hashing buffer, allocated once: no allocation churn per piece.
    static HASH_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0u8; HASH_CHUNK_BYTES]);
}

/// The digest of the piece of `len` bytes of `file` at `offset`, of a manifest whose pieces
/// are `piece_size_bytes`, read in chunks.
pub fn piece_digest_at(
    file: &File,
    offset: u64,
    len: u64,
    piece_size_bytes: u32,
    path: &Path,
) -> Result<Digest, StoreError> {
    let mut hasher = PieceHasher::new(piece_size_bytes);
    feed_range(&mut |bytes| hasher.update(bytes), file, offset, len, path)?;
    Ok(hasher.finish())
}

/// Feeds `len` bytes of `file` starting at `offset` to `feed`, read in chunks (a piece of a
/// directory is hashed file by file).
pub fn feed_range(
    feed: &mut impl FnMut(&[u8]),
    file: &File,
    offset: u64,
    len: u64,
    path: &Path,
) -> Result<(), StoreError> {
    HASH_BUFFER.with_borrow_mut(|buffer| {
        let mut done = 0u64;
        while done < len {
            // The chunk is at most HASH_CHUNK_BYTES, so it fits in usize.
            let chunk = (len - done).min(HASH_CHUNK_BYTES as u64) as usize;
            file.read_exact_at(&mut buffer[..chunk], offset + done).map_err(store_io("read", path))?;
            feed(&buffer[..chunk]);
            done += chunk as u64;
        }
        Ok(())
    })
}

/// The manifest of the file or directory at `path`, cut into pieces of `piece_size_bytes` (or
/// the automatic size for its length). The name is the path's last component; a directory is
/// described as one item (see [`crate::tree`]).
pub fn manifest_of(path: &Path, piece_size_bytes: Option<u32>) -> Result<Manifest, NetError> {
    describe(path, piece_size_bytes).map(|described| described.manifest)
}

/// [`manifest_of`], with the digests of every chunk computed on the way.
pub fn describe(path: &Path, piece_size_bytes: Option<u32>) -> Result<Described, NetError> {
    let metadata = std::fs::metadata(path).map_err(NetError::io("inspect", path))?;
    if metadata.is_dir() {
        return crate::tree::describe_tree(path, piece_size_bytes);
    }
    let mut file = File::open(path).map_err(NetError::io("open", path))?;
    let metadata = file.metadata().map_err(NetError::io("inspect", path))?;
    if !metadata.is_file() {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file or a directory");
        return Err(NetError::Io { action: "describe", path: path.to_owned(), error: source });
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let piece_size = piece_size_bytes.unwrap_or_else(|| auto_piece_size(metadata.len()));
    let to_manifest_error = |error| NetError::Manifest { path: path.to_owned(), error };
    let mut builder = ManifestBuilder::new(name, piece_size).map_err(to_manifest_error)?;
    feed_file(&mut builder, &mut file, path)?;
    builder.describe().map_err(to_manifest_error)
}

/// Feeds the whole of `file` to `builder`; returns the bytes fed.
pub(crate) fn feed_file(builder: &mut ManifestBuilder, file: &mut File, path: &Path) -> Result<u64, NetError> {
    let mut buffer = vec![0u8; HASH_CHUNK_BYTES];
    let mut fed = 0u64;
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => return Ok(fed),
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(NetError::io("read", path)(e)),
        };
        builder.update(&buffer[..read]);
        fed += read as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_core::PieceIndex;

    #[test]
    fn manifest_and_piece_hashes_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data.bin");
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let manifest = manifest_of(&path, Some(16 * 1024)).expect("manifest");
        assert_eq!(manifest.name(), "data.bin");
        assert_eq!(manifest.piece_count(), 5);
        let file = File::open(&path).expect("open");
        for piece in manifest.pieces() {
            let len = u64::from(manifest.piece_len(piece));
            let digest = piece_digest_at(&file, manifest.piece_offset(piece), len, manifest.piece_size_bytes(), &path)
                .expect("hash");
            assert_eq!(digest, manifest.piece_hash(piece), "{piece}");
        }
        assert_eq!(manifest.piece_hash(PieceIndex(0)), p2p_core::piece_digest(16 * 1024, &bytes[..16 * 1024]));
    }

    #[test]
    fn unreadable_paths_and_bad_piece_sizes_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let error = manifest_of(&missing, None).expect_err("missing file");
        assert!(error.to_string().contains("missing"), "{error}");
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").expect("write");
        assert!(matches!(manifest_of(&path, Some(1000)), Err(NetError::Manifest { .. })));
    }
}
