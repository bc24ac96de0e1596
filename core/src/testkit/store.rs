//! The harness's store: each file as one byte vector in memory, held to the same
//! [`Store`] contract as the drivers' stores (checked by the conformance suite below).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::error::StoreError;
use crate::ids::{Digest, FileId, PieceIndex};
use crate::limits::BLOCK_BYTES_MAX;
use crate::manifest::{piece_digest, Manifest};
use crate::store::Store;

/// Files by id: complete copies for shared files, partial ones for downloads.
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    files: BTreeMap<FileId, MemoryFile>,
}

#[derive(Debug)]
struct MemoryFile {
    manifest: Manifest,
    bytes: Vec<u8>,
    /// Pieces that may be read: shared, or verified so far.
    served: Bitfield,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Shared,
    Downloading,
    Complete,
}

impl MemoryStore {
    /// Serves the pieces in `have` of `bytes`, described by `manifest`.
    pub(crate) fn share(&mut self, manifest: &Manifest, bytes: &[u8], have: Bitfield) {
        let file = MemoryFile { manifest: manifest.clone(), bytes: bytes.to_vec(), served: have, state: State::Shared };
        self.files.insert(manifest.file_id(), file);
    }

    /// The bytes stored for a file.
    pub(crate) fn bytes(&self, file_id: FileId) -> Option<&[u8]> {
        self.files.get(&file_id).map(|f| f.bytes.as_slice())
    }

    fn file(&mut self, file_id: FileId) -> Result<&mut MemoryFile, StoreError> {
        self.files.get_mut(&file_id).ok_or(StoreError::NotStored)
    }
}

impl MemoryFile {
    /// The byte range of `len` bytes at `offset` in `piece`, checked to stay inside the piece.
    fn range(&self, piece: PieceIndex, offset: u32, len: u64) -> Result<std::ops::Range<usize>, StoreError> {
        let out_of_range = StoreError::OutOfRange { piece, offset, len };
        let Some(piece) = self.manifest.piece(piece.0) else { return Err(out_of_range) };
        if u64::from(offset) + len > u64::from(self.manifest.piece_len(piece)) {
            return Err(out_of_range);
        }
        // Harness files are small: every offset fits in usize.
        let start = (self.manifest.piece_offset(piece) + u64::from(offset)) as usize;
        Ok(start..start + len as usize)
    }
}

impl Store for MemoryStore {
    fn allocate(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        self.files.entry(manifest.file_id()).or_insert_with(|| MemoryFile {
            manifest: manifest.clone(),
            bytes: vec![0; manifest.length_bytes() as usize],
            served: Bitfield::new(manifest.piece_count()),
            state: State::Downloading,
        });
        Ok(())
    }

    fn write_block(&mut self, file_id: FileId, piece: PieceIndex, offset: u32, bytes: Bytes) -> Result<(), StoreError> {
        let file = self.file(file_id)?;
        if file.state != State::Downloading {
            return Err(StoreError::NotDownloading);
        }
        let range = file.range(piece, offset, bytes.len() as u64)?;
        file.bytes[range].copy_from_slice(&bytes);
        Ok(())
    }

    fn hash_piece(&mut self, file_id: FileId, piece: PieceIndex) -> Result<Digest, StoreError> {
        let file = self.file(file_id)?;
        let len = file.manifest.piece(piece.0).map_or(0, |p| file.manifest.piece_len(p));
        let range = file.range(piece, 0, u64::from(len))?;
        Ok(piece_digest(file.manifest.piece_size_bytes(), &file.bytes[range]))
    }

    fn mark_verified(&mut self, file_id: FileId, piece: PieceIndex) -> Result<(), StoreError> {
        let file = self.file(file_id)?;
        file.range(piece, 0, 0)?;
        file.served.set(piece);
        Ok(())
    }

    fn read_block(&mut self, file_id: FileId, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StoreError> {
        let file = self.file(file_id)?;
        if !file.served.has(piece) {
            return Err(StoreError::NotHeld { piece });
        }
        if len > BLOCK_BYTES_MAX {
            return Err(StoreError::OutOfRange { piece, offset, len: u64::from(len) });
        }
        let range = file.range(piece, offset, u64::from(len))?;
        Ok(Bytes::copy_from_slice(&file.bytes[range]))
    }

    fn finalize(&mut self, file_id: FileId) -> Result<(), StoreError> {
        let file = self.file(file_id)?;
        if file.state == State::Downloading {
            if !file.served.is_full() {
                return Err(StoreError::Incomplete { have: file.served.count(), total: file.served.len() });
            }
            file.state = State::Complete;
        }
        Ok(())
    }

    fn resume(&mut self, file_id: FileId) -> Result<Option<(Manifest, Bitfield)>, StoreError> {
        let download = self.files.get(&file_id).filter(|f| f.state == State::Downloading);
        Ok(download.map(|f| (f.manifest.clone(), f.served.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[test]
    fn the_harness_store_keeps_the_store_contract() {
        let (manifest, bytes) = conformance::sample_file();
        // Memory survives a crash of the peer: restarting changes nothing.
        conformance::check(&mut MemoryStore::default(), |_| {}, &manifest, &bytes);
    }
}
