//! The peer's routing to and from [`Uploads`]: remote requests are checked here (only verified
//! pieces, only whole ranges inside the piece) before they are queued, reads the upload side
//! chooses become `ReadBlock` outputs, and finished reads become `Data` (or a `Reject`).

use bytes::Bytes;

use crate::error::StoreError;
use crate::ids::{ConnId, FileId, PieceIndex};
use crate::limits::BLOCK_BYTES;
use crate::machine::{Event, Output};
use crate::wire::{Message, RejectReason};

use super::super::Peer;
use super::ServeJob;

impl Peer {
    pub(in crate::peer) fn on_request(
        &mut self,
        conn: ConnId,
        file_id: FileId,
        piece: PieceIndex,
        offset: u32,
        len: u32,
    ) {
        let reject = |reason| Message::Reject { file_id, piece, offset, reason };
        let entry = self.files.get(&file_id);
        let piece_len = entry.and_then(|e| e.manifest.as_ref()).and_then(|m| m.piece(piece.0).map(|p| m.piece_len(p)));
        let Some(piece_len) = piece_len.filter(|_| entry.is_some_and(|e| e.have.has(piece))) else {
            return self.send(conn, reject(RejectReason::NotHave));
        };
        let in_range = len > 0 && len <= BLOCK_BYTES && offset.checked_add(len).is_some_and(|end| end <= piece_len);
        if !in_range {
            return self.send(conn, reject(RejectReason::BadRange));
        }
        if !self.remotes.contains_key(&conn) {
            return;
        }
        if self.uploads.request(ServeJob { conn, file_id, piece, offset, len }).is_err() {
            return self.send(conn, reject(RejectReason::Busy));
        }
        self.pump_uploads();
    }

    pub(in crate::peer) fn on_cancel(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex, offset: u32) {
        self.uploads.cancel(conn, file_id, piece, offset);
    }

    /// `data_frames` more of `conn`'s `Data` frames left.
    pub(in crate::peer) fn on_sent(&mut self, conn: ConnId, data_frames: u32) {
        self.uploads.sent(conn, data_frames);
        self.pump_uploads();
    }

    /// Starts the reads the upload side allows now.
    pub(in crate::peer) fn pump_uploads(&mut self) {
        loop {
            let (remotes, files) = (&self.remotes, &self.files);
            // A download keeps its pieces' holder counts; other files' are counted over the remotes.
            let holders = |file_id: FileId, piece| match files.get(&file_id).and_then(|e| e.download.as_ref()) {
                Some(download) => download.availability(piece),
                None => remotes.holders(file_id, piece),
            };
            let Some(job) = self.uploads.next_read(self.now, holders) else {
                break;
            };
            let ServeJob { conn, file_id, piece, offset, len } = job;
            self.push(Output::ReadBlock { conn, file_id, piece, offset, len });
        }
    }

    pub(in crate::peer) fn on_block_read(
        &mut self,
        conn: ConnId,
        file_id: FileId,
        piece: PieceIndex,
        offset: u32,
        result: Result<Bytes, StoreError>,
    ) {
        self.uploads.read_done(conn, file_id, piece, offset);
        if let Some(remote) = self.remotes.get(&conn) {
            let to = remote.addr;
            match result {
                Ok(bytes) => {
                    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                    self.send(conn, Message::Data { file_id, piece, offset, bytes });
                    self.event(Event::BlockServed { file_id, piece, len, to });
                    if self.is_last_block(file_id, piece, offset, len) {
                        self.offer_uploaded(conn, file_id, piece);
                    }
                }
                Err(_) => self.send(conn, Message::Reject { file_id, piece, offset, reason: RejectReason::ReadFailed }),
            }
        }
        self.pump_uploads();
    }

    /// Whether `offset..offset + len` ends `piece`.
    fn is_last_block(&self, file_id: FileId, piece: PieceIndex, offset: u32, len: u32) -> bool {
        let manifest = self.files.get(&file_id).and_then(|e| e.manifest.as_ref());
        manifest.is_some_and(|m| offset.checked_add(len) == Some(m.piece_len(piece)))
    }
}
