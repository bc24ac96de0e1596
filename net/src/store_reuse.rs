//! A download already finished in the output folder: a store that has never seen a file can
//! still find it at `<out>/<name>` (put there by an earlier run on another store, or copied by
//! hand). Its pieces are checked against the manifest; a file that matches whole is served in
//! place like a share and nothing is fetched, and one that matches in part seeds the download's
//! `.part` with its good pieces, so only the others are fetched.

use std::fs::{self, File};
use std::path::PathBuf;

use p2p_core::{Bitfield, Manifest};

use super::{encode_bitfield, store_io, verify_pieces, write_atomically, Store};
use crate::error::NetError;
use crate::item::ItemFiles;

/// What a file in the output folder is to a download.
#[derive(Debug, PartialEq, Eq)]
pub enum Reused {
    /// The whole file, verified, served from this path from now on: nothing to fetch.
    Whole(PathBuf),
    /// This many pieces verified, copied into the download's `.part` (its resume picks them up).
    Partial(u32),
    /// Nothing usable: no such file, another length, no piece matches, a directory, or the store
    /// already knows the file.
    Nothing,
}

impl Store {
    /// Looks for the file of `manifest` in the download's output folder under the manifest's
    /// name and takes up what of it verifies (see the module docs). Blocks on hashing every
    /// piece, on all cores.
    pub fn reuse_out(&self, manifest: &Manifest) -> Result<Reused, NetError> {
        let file_id = manifest.file_id();
        // A directory finished earlier is laid out under a free name, so there is no one path to
        // look at: only single files are taken up.
        if manifest.tree().is_some() || self.lock().contains_key(&file_id) || self.sidecar(file_id, "manifest").exists()
        {
            return Ok(Reused::Nothing);
        }
        let out = self.outs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&file_id).cloned();
        let path = out.unwrap_or_else(|| self.out.clone()).join(manifest.name());
        let Ok(file) = File::open(&path) else { return Ok(Reused::Nothing) };
        let metadata = file.metadata().map_err(NetError::io("inspect", &path))?;
        if !metadata.is_file() || metadata.len() != manifest.length_bytes() {
            return Ok(Reused::Nothing);
        }
        let file = ItemFiles::File { file, path: path.clone() };
        let verified = verify_pieces(&file, manifest, &Bitfield::full(manifest.piece_count()))?;
        if verified.is_full() {
            self.register_shared(&path, manifest.clone(), verified)?;
            return Ok(Reused::Whole(path));
        }
        if verified.is_empty() {
            return Ok(Reused::Nothing);
        }
        let part = self.sidecar(file_id, "part");
        fs::copy(&path, &part).map_err(NetError::io("copy into the store", &path))?;
        File::open(&part).and_then(|part| part.sync_all()).map_err(store_io("sync", &part))?;
        write_atomically(&self.sidecar(file_id, "bitfield"), &encode_bitfield(&verified))?;
        write_atomically(&self.sidecar(file_id, "manifest"), &manifest.to_cbor())?;
        Ok(Reused::Partial(verified.count()))
    }
}
