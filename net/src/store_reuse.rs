//! A download already finished in the output folder: a store that has never seen a file can
//! still find it at `<out>/<name>` (put there by an earlier run on another store, or copied by
//! hand). Its pieces are checked against the manifest; a file that matches whole is served in
//! place like a share and nothing is fetched, and one that matches in part seeds the download's
//! `.part` with its good pieces, so only the others are fetched. A directory is served in place
//! only when `<out>/<name>` holds exactly its tree, every piece verified; a tree that matches in
//! part (some files missing, of another length or changed) seeds the `.part` the same way with
//! the pieces whose bytes all lie in files of the right length there and verify, so only the
//! rest is fetched, and the finished tree is laid out beside it under a free name.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use p2p_core::limits::BLOCK_BYTES;
use p2p_core::{Bitfield, Manifest};

use super::{encode_bitfield, store_io, verify_pieces, write_atomically, Store};
use crate::error::NetError;
use crate::item::ItemFiles;
use crate::tree::{holds_tree, join};

/// What a file in the output folder is to a download.
#[derive(Debug, PartialEq, Eq)]
pub enum Reused {
    /// The whole file, verified, served from this path from now on: nothing to fetch.
    Whole(PathBuf),
    /// This many pieces verified, copied into the download's `.part` (its resume picks them up).
    Partial(u32),
    /// Nothing usable: no such file, another length, no piece matches (of a file, or of a
    /// directory's tree), or the store already knows the file.
    Nothing,
}

impl Store {
    /// Looks for the file of `manifest` in the download's output folder under the manifest's
    /// name and takes up what of it verifies (see the module docs). Blocks on hashing every
    /// piece, on all cores.
    pub fn reuse_out(&self, manifest: &Manifest) -> Result<Reused, NetError> {
        let file_id = manifest.file_id();
        if self.lock().contains_key(&file_id) || self.sidecar(file_id, "manifest").exists() {
            return Ok(Reused::Nothing);
        }
        let out = self.outs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&file_id).cloned();
        let path = out.unwrap_or_else(|| self.out.clone()).join(manifest.name());
        if manifest.tree().is_some() {
            if holds_tree(&path, manifest) {
                self.register_shared(&path, manifest.clone(), Bitfield::full(manifest.chunk_count()))?;
                return Ok(Reused::Whole(path));
            }
            if !path.is_dir() {
                return Ok(Reused::Nothing);
            }
            let tree = ItemFiles::Tree { root: path.clone(), manifest: Arc::new(manifest.clone()) };
            let verified = verify_pieces(&tree, manifest, &pieces_in_place(&path, manifest))?;
            if verified.is_empty() {
                return Ok(Reused::Nothing);
            }
            let part = self.sidecar(file_id, "part");
            copy_pieces(&tree, manifest, &verified, &part)?;
            return self.seed_download(manifest, verified);
        }
        let Ok(file) = File::open(&path) else { return Ok(Reused::Nothing) };
        let metadata = file.metadata().map_err(NetError::io("inspect", &path))?;
        if !metadata.is_file() || metadata.len() != manifest.length_bytes() {
            return Ok(Reused::Nothing);
        }
        let file = ItemFiles::File { file, path: path.clone() };
        let verified = verify_pieces(&file, manifest, &Bitfield::full(manifest.chunk_count()))?;
        if verified.is_full() {
            self.register_shared(&path, manifest.clone(), verified)?;
            return Ok(Reused::Whole(path));
        }
        if verified.is_empty() {
            return Ok(Reused::Nothing);
        }
        let part = self.sidecar(file_id, "part");
        fs::copy(&path, &part).map_err(NetError::io("copy into the store", &path))?;
        self.seed_download(manifest, verified)
    }

    /// The download's `.part`, already written, gets its bitfield (`verified`) and manifest
    /// beside it, so the download resumes from them.
    fn seed_download(&self, manifest: &Manifest, verified: Bitfield) -> Result<Reused, NetError> {
        let file_id = manifest.file_id();
        let part = self.sidecar(file_id, "part");
        File::open(&part).and_then(|part| part.sync_all()).map_err(store_io("sync", &part))?;
        write_atomically(&self.sidecar(file_id, "bitfield"), &encode_bitfield(&verified))?;
        write_atomically(&self.sidecar(file_id, "manifest"), &manifest.to_cbor())?;
        Ok(Reused::Partial(verified.count()))
    }
}

/// The chunks of the pieces of the directory `manifest` describes whose bytes all lie in files
/// that are at `root` with the manifest's length: the only ones worth hashing (a missing or
/// resized file fails every piece it is part of).
fn pieces_in_place(root: &Path, manifest: &Manifest) -> Bitfield {
    let tree = manifest.tree().unwrap_or_default();
    let in_place: Vec<bool> = tree
        .iter()
        .map(|entry| match entry.length_bytes() {
            Some(length) => fs::metadata(join(root, entry)).is_ok_and(|m| m.is_file() && m.len() == length),
            None => true,
        })
        .collect();
    let mut chunks = Bitfield::new(manifest.chunk_count());
    for piece in manifest.pieces() {
        let (at, len) = (manifest.piece_offset(piece), u64::from(manifest.piece_len(piece)));
        if manifest.spans(at, len).all(|span| in_place.get(span.entry).copied().unwrap_or(false)) {
            manifest.chunks_of(piece).for_each(|chunk| _ = chunks.set(chunk));
        }
    }
    chunks
}

/// Writes a new `.part` at `part` of the item's length holding the `chunks` of `item`, read a
/// block at a time.
fn copy_pieces(item: &ItemFiles, manifest: &Manifest, chunks: &Bitfield, part: &Path) -> Result<(), NetError> {
    let file = File::create(part).map_err(store_io("create", part))?;
    file.set_len(manifest.length_bytes()).map_err(store_io("size", part))?;
    let part_file = ItemFiles::part(file, part);
    for chunk in chunks.iter() {
        let (start, end) =
            (manifest.chunk_offset(chunk), manifest.chunk_offset(chunk) + u64::from(manifest.chunk_len(chunk)));
        let mut at = start;
        while at < end {
            // At most a block, so it fits in usize.
            let len = (end - at).min(u64::from(BLOCK_BYTES)) as usize;
            part_file.write_all_at(&item.read(len, at)?, at)?;
            at += len as u64;
        }
    }
    Ok(())
}
