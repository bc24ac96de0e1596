//! Per-file state of a peer: the manifest, the verified chunks, the download (see
//! `downloads`) while chunks are missing, and the block arithmetic of a chunk. A `FileEntry`'s
//! state is private: callers read it through accessors and change it through one method per
//! step of the file's life (shared, manifest adopted, acknowledged by a tracker, finished).

use crate::bitfield::Bitfield;
use crate::ids::{ChunkIndex, FileId};
use crate::manifest::Manifest;
use crate::time::Time;

use super::downloads::{Download, Phase};

/// A file the peer shares, downloads, or both.
#[derive(Debug)]
pub(super) struct FileEntry {
    /// The manifest; `None` only for a download whose first `Located` has not arrived.
    manifest: Option<Manifest>,
    /// Verified chunks (zero-length until the manifest is known).
    have: Bitfield,
    /// Whether `Event::Sharing` was reported (once per file).
    sharing_reported: bool,
    /// Download state, while chunks are missing or the file is being finalized.
    download: Option<Download>,
    /// Whether the file came from a local share rather than a download: only such a holder
    /// offers its chunks a few at a time (see `offers`).
    shared_here: bool,
    /// Chunks whose last block we read for a remote: a copy is on its way or arrived, whether
    /// or not its receiver announced it yet (empty until the first such read).
    sent_whole: Bitfield,
}

impl FileEntry {
    /// A file shared from a complete or partial local copy.
    pub fn shared(manifest: Manifest, have: Bitfield) -> FileEntry {
        FileEntry {
            manifest: Some(manifest),
            have,
            sharing_reported: false,
            download: None,
            shared_here: true,
            sent_whole: Bitfield::new(0),
        }
    }

    /// A download; `resume` is what a store already verified.
    pub fn downloading(resume: Option<(Manifest, Bitfield)>, now: Time) -> FileEntry {
        let mut download = Download::new(now);
        let (manifest, have) = match resume {
            Some((manifest, have)) => {
                download.init_slots(&have);
                (Some(manifest), have)
            }
            None => (None, Bitfield::new(0)),
        };
        FileEntry {
            manifest,
            have,
            sharing_reported: true,
            download: Some(download),
            shared_here: false,
            sent_whole: Bitfield::new(0),
        }
    }

    /// The manifest, if known.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// The verified chunks.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// The download, while chunks are missing or the file is being finalized.
    pub fn download(&self) -> Option<&Download> {
        self.download.as_ref()
    }

    /// The download, for the scheduler and the routing to change (its own state stays private
    /// to `downloads`).
    pub fn download_mut(&mut self) -> Option<&mut Download> {
        self.download.as_mut()
    }

    /// Whether the file came from a local share rather than a download.
    pub fn is_shared_here(&self) -> bool {
        self.shared_here
    }

    /// We read the last block of `chunk` for a remote.
    pub fn sent_whole(&mut self, chunk: ChunkIndex) {
        if self.sent_whole.len() != self.have.len() {
            self.sent_whole = Bitfield::new(self.have.len());
        }
        self.sent_whole.set(chunk);
    }

    /// Whether we read the last block of `chunk` for a remote.
    pub fn has_sent_whole(&self, chunk: ChunkIndex) -> bool {
        self.sent_whole.has(chunk)
    }

    /// The chunks of `have` (of this file's length) are served too.
    pub fn add_chunks(&mut self, have: &Bitfield) {
        debug_assert!(self.manifest.is_some(), "chunks are added to a file whose manifest is known");
        for chunk in have.iter() {
            self.have.set(chunk);
        }
    }

    /// The first manifest of a download arrived: its chunks are sized by it, none verified.
    pub fn adopt_manifest(&mut self, manifest: Manifest) {
        let Some(download) = self.download.as_mut() else { unreachable!("only a download adopts a manifest") };
        debug_assert!(self.manifest.is_none(), "a manifest is adopted once");
        self.have = Bitfield::new(manifest.chunk_count());
        download.init_slots(&self.have);
        self.manifest = Some(manifest);
    }

    /// Whether a file shared here waits for a tracker's first acknowledgement: no tracker may
    /// know it yet, so its announces carry the manifest.
    pub fn unacknowledged(&self) -> bool {
        !self.sharing_reported
    }

    /// A tracker acknowledged an announce of the file: whether `Event::Sharing` is due (only
    /// the first time).
    pub fn sharing_due(&mut self) -> bool {
        !std::mem::replace(&mut self.sharing_reported, true)
    }

    /// The download is over: the file is complete and in place.
    pub fn finished(&mut self) {
        self.download = None;
    }

    /// The manifest, the download and the verified chunks, for a download whose manifest is
    /// known.
    pub fn download_parts(&mut self) -> Option<(&Manifest, &mut Download, &mut Bitfield)> {
        match (self.manifest.as_ref(), self.download.as_mut()) {
            (Some(manifest), Some(download)) => Some((manifest, download, &mut self.have)),
            _ => None,
        }
    }

    /// Whether the file is still being fetched.
    pub fn is_fetching(&self) -> bool {
        self.download.as_ref().is_some_and(|d| d.phase() == Phase::Fetching)
    }
}

/// Number of blocks of `block_bytes` in a chunk of `chunk_len` bytes.
pub(super) fn block_count(block_bytes: u32, chunk_len: u32) -> u32 {
    chunk_len.div_ceil(block_bytes.max(1))
}

/// Offset and length of block `block` of a chunk of `chunk_len` bytes.
pub(super) fn block_span(block_bytes: u32, chunk_len: u32, block: u32) -> (u32, u32) {
    let offset = block * block_bytes;
    (offset, (chunk_len - offset).min(block_bytes))
}

/// Mask with the low `blocks` bits set: every block of a chunk.
pub(super) fn all_blocks(blocks: u32) -> u64 {
    if blocks >= 64 {
        u64::MAX
    } else {
        (1u64 << blocks) - 1
    }
}

/// The block index an offset names, if it is a block boundary inside the chunk.
pub(super) fn block_at(block_bytes: u32, chunk_len: u32, offset: u32) -> Option<u32> {
    let block_bytes = block_bytes.max(1);
    (offset.is_multiple_of(block_bytes) && offset < chunk_len.max(1)).then_some(offset / block_bytes)
}

/// Key of one outstanding block request on a connection.
pub(super) type BlockKey = (FileId, ChunkIndex, u32);

#[cfg(test)]
mod tests {
    use super::*;

    use crate::limits::BLOCK_BYTES;

    #[test]
    fn block_arithmetic_covers_short_last_blocks() {
        const B: u32 = BLOCK_BYTES;
        assert_eq!(block_count(B, B * 2 + 1), 3);
        assert_eq!(block_span(B, B * 2 + 1, 2), (B * 2, 1));
        assert_eq!(block_count(B, 10), 1);
        assert_eq!(block_span(B, 10, 0), (0, 10));
        assert_eq!(all_blocks(3), 0b111);
        assert_eq!(all_blocks(64), u64::MAX);
        assert_eq!(block_at(B, B * 2, B), Some(1));
        assert_eq!(block_at(B, B * 2, 7), None);
        assert_eq!(block_at(B, B * 2, B * 2), None);
        assert_eq!(block_at(4 * B, B * 8, B), None, "a boundary of other blocks is none of these");
    }
}
