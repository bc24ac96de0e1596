//! The harness's store: each file as one byte vector in memory, held to the same
//! [`Store`] contract as the drivers' stores (checked by the conformance suite below).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::error::StoreError;
use crate::ids::{ChunkIndex, Digest, FileId, PieceIndex};
use crate::limits::BLOCK_BYTES_MAX;
use crate::manifest::Manifest;
use crate::store::{Resume, Store};

/// Files by id: complete copies for shared files, partial ones for downloads.
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    files: BTreeMap<FileId, MemoryFile>,
}

#[derive(Debug)]
struct MemoryFile {
    manifest: Manifest,
    bytes: Vec<u8>,
    /// Chunks that may be read: shared, or verified so far.
    served: Bitfield,
    /// The chunk digest lists the peer asked to keep.
    lists: BTreeMap<PieceIndex, Vec<Digest>>,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Shared,
    Downloading,
    Complete,
}

impl MemoryStore {
    /// Serves the chunks in `have` of `bytes`, described by `manifest`.
    pub(crate) fn share(&mut self, manifest: &Manifest, bytes: &[u8], have: Bitfield) {
        let file = MemoryFile {
            manifest: manifest.clone(),
            bytes: bytes.to_vec(),
            served: have,
            lists: BTreeMap::new(),
            state: State::Shared,
        };
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
    /// The byte range of `len` bytes at `offset` in `chunk`, checked to stay inside the chunk.
    fn range(&self, chunk: ChunkIndex, offset: u32, len: u64) -> Result<std::ops::Range<usize>, StoreError> {
        let out_of_range = StoreError::OutOfRange { chunk, offset, len };
        let Some(chunk) = self.manifest.chunk(chunk.0) else { return Err(out_of_range) };
        if u64::from(offset) + len > u64::from(self.manifest.chunk_len(chunk)) {
            return Err(out_of_range);
        }
        // Harness files are small: every offset fits in usize.
        let start = (self.manifest.chunk_offset(chunk) + u64::from(offset)) as usize;
        Ok(start..start + len as usize)
    }
}

impl Store for MemoryStore {
    fn allocate(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        self.files.entry(manifest.file_id()).or_insert_with(|| MemoryFile {
            manifest: manifest.clone(),
            bytes: vec![0; manifest.length_bytes() as usize],
            served: Bitfield::new(manifest.chunk_count()),
            lists: BTreeMap::new(),
            state: State::Downloading,
        });
        Ok(())
    }

    fn write_block(&mut self, file_id: FileId, chunk: ChunkIndex, offset: u32, bytes: Bytes) -> Result<(), StoreError> {
        let file = self.file(file_id)?;
        if file.state != State::Downloading {
            return Err(StoreError::NotDownloading);
        }
        let range = file.range(chunk, offset, bytes.len() as u64)?;
        file.bytes[range].copy_from_slice(&bytes);
        Ok(())
    }

    fn hash_chunk(&mut self, file_id: FileId, chunk: ChunkIndex) -> Result<Digest, StoreError> {
        let file = self.file(file_id)?;
        let len = file.manifest.chunk(chunk.0).map_or(0, |p| file.manifest.chunk_len(p));
        let range = file.range(chunk, 0, u64::from(len))?;
        Ok(Digest::of(&file.bytes[range]))
    }

    fn mark_verified(&mut self, file_id: FileId, chunk: ChunkIndex) -> Result<(), StoreError> {
        let file = self.file(file_id)?;
        file.range(chunk, 0, 0)?;
        file.served.set(chunk);
        Ok(())
    }

    fn read_block(&mut self, file_id: FileId, chunk: ChunkIndex, offset: u32, len: u32) -> Result<Bytes, StoreError> {
        let file = self.file(file_id)?;
        if !file.served.has(chunk) {
            return Err(StoreError::NotHeld { chunk });
        }
        if len > BLOCK_BYTES_MAX {
            return Err(StoreError::OutOfRange { chunk, offset, len: u64::from(len) });
        }
        let range = file.range(chunk, offset, u64::from(len))?;
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

    fn keep_list(&mut self, file_id: FileId, piece: PieceIndex, digests: &[Digest]) -> Result<(), StoreError> {
        self.file(file_id)?.lists.insert(piece, digests.to_vec());
        Ok(())
    }

    fn resume(&mut self, file_id: FileId) -> Result<Option<Resume>, StoreError> {
        let download = self.files.get(&file_id).filter(|f| f.state == State::Downloading);
        Ok(download.map(|f| Resume {
            manifest: f.manifest.clone(),
            have: f.served.clone(),
            lists: f.lists.iter().map(|(piece, list)| (*piece, list.clone())).collect(),
        }))
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
