//! The checks between a remote's block request and the upload side: a request is queued only
//! for a verified chunk and a whole range inside it, and a finished read tells whether it ended
//! its chunk (an upload the offers count). This module owns no state; `Peer` routes requests
//! through [`check_request`] to [`Uploads`](super::Uploads), reads the upload side chooses
//! become `ReadBlock` outputs, and finished reads become `Data` (or a `Reject`).

use crate::ids::ChunkIndex;
use crate::wire::RejectReason;

use super::super::chunks::FileEntry;

/// Why a request for `offset..offset + len` of `chunk` of the file `entry` (if the peer knows
/// it) is refused, if it is: the chunk is not verified here, or the range is not a block
/// inside it.
pub(in crate::peer) fn check_request(
    entry: Option<&FileEntry>,
    chunk: ChunkIndex,
    offset: u32,
    len: u32,
) -> Result<(), RejectReason> {
    let verified = entry.filter(|e| e.have().has(chunk));
    let manifest = verified.and_then(|e| e.manifest());
    let (chunk_len, block_bytes) = manifest
        .and_then(|m| m.chunk(chunk.0).map(|p| (m.chunk_len(p), m.block_bytes())))
        .ok_or(RejectReason::NotHave)?;
    let in_range = len > 0 && len <= block_bytes && offset.checked_add(len).is_some_and(|end| end <= chunk_len);
    if in_range {
        Ok(())
    } else {
        Err(RejectReason::BadRange)
    }
}

/// Whether `offset..offset + len` ends `chunk` of the file `entry`.
pub(in crate::peer) fn is_last_block(entry: Option<&FileEntry>, chunk: ChunkIndex, offset: u32, len: u32) -> bool {
    let manifest = entry.and_then(|e| e.manifest());
    manifest.is_some_and(|m| offset.checked_add(len) == Some(m.chunk_len(chunk)))
}
