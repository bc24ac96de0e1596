//! What to request from whom, and what to do with what arrives.
//!
//! Each ready remote keeps block requests in flight for about `REQUEST_PIPELINE_TIME` of its
//! measured delivery rate (at least one block, at most `REQUESTS_IN_FLIGHT_PER_CONN_MAX`), so a
//! slow remote holds up few pieces. Blocks come first from the pieces already assigned to it; a new piece is the rarest among
//! the connected remotes (random tie-break) that it holds; partially fetched pieces whose remote
//! went away come before fresh ones. When no piece is left to start and a remote's pipeline is
//! empty, it joins a piece another remote is fetching (endgame) if that remote lags (nothing
//! arrived from it for a while), and the slower copy is cancelled as blocks arrive. Every block is written by the driver, every written piece is hashed, and a
//! sender proven to have sent a bad block of a piece that failed its hash gets a strike (see
//! `downloads` for the proof, `bans` for what strikes lead to).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::error::StoreError;
use crate::ids::{ConnId, Digest, FileId, PeerId, PieceIndex};
use crate::limits::{BLOCK_BYTES, BUSY_RETRY_DELAY, ENDGAME_PATIENCE, PIECES_ASSIGNED_PER_CONN_MAX};
use crate::machine::{Event, Output, Progress};
use crate::time::Time;
use crate::wire::{Message, RejectReason};

use super::downloads::{Arrival, Choice, Chooser, Phase, Verdict};
use super::pieces::{block_at, block_span, FileEntry};
use super::remote::{Remote, Stage};
use super::Peer;

/// Whether `remote` delivers clearly slower than an endgame warrants: nothing arrived from it
/// for [`ENDGAME_PATIENCE`], or for two blocks' time at its measured rate when that is longer.
fn lags(remote: &Remote, now: Time) -> bool {
    let blocks_time = (2 * u64::from(BLOCK_BYTES) * 1_000_000)
        .checked_div(remote.rate.bytes_per_s())
        .map_or(ENDGAME_PATIENCE, Duration::from_micros);
    remote.progress_at + blocks_time.max(ENDGAME_PATIENCE) <= now
}

impl Peer {
    /// Fills the pipeline of every ready remote.
    pub(super) fn schedule_all(&mut self) {
        for conn in self.remotes.ready() {
            self.schedule(conn);
        }
    }

    /// Remotes whose rest is over (stalled, or `Busy`) get requests again.
    pub(super) fn wake_rested(&mut self) {
        let now = self.now;
        let rested: Vec<ConnId> = self
            .remotes
            .iter()
            .filter(|(_, r)| r.resting_until.is_some_and(|until| until <= now))
            .map(|(c, _)| *c)
            .collect();
        for conn in rested {
            if let Some(remote) = self.remotes.get_mut(&conn) {
                remote.resting_until = None;
            }
            self.schedule(conn);
        }
    }

    /// Fills `conn`'s pipeline with block requests for every file it can help with.
    pub(super) fn schedule(&mut self, conn: ConnId) {
        let Some(remote) = self.remotes.get(&conn) else { return };
        if remote.stage != Stage::Ready {
            return;
        }
        let files: Vec<FileId> = remote.files.keys().copied().collect();
        for file_id in files {
            if self.files.get(&file_id).is_some_and(|e| e.is_fetching()) {
                self.fill(conn, file_id);
            }
        }
    }

    fn fill(&mut self, conn: ConnId, file_id: FileId) {
        let Some(manifest) = self.files.get(&file_id).and_then(|e| e.manifest.as_ref()) else { return };
        let block_bytes = manifest.piece_size_bytes().min(BLOCK_BYTES);
        loop {
            let Some(remote) = self.remotes.get(&conn) else { return };
            if remote.in_flight.len() >= remote.pipeline_depth(block_bytes) || remote.is_resting(self.now) {
                return;
            }
            if let Some((piece, block)) = self.next_block(conn, file_id) {
                self.request_block(conn, file_id, piece, block);
                continue;
            }
            let assigned = remote.assigned.iter().filter(|(f, _)| *f == file_id).count();
            if assigned >= PIECES_ASSIGNED_PER_CONN_MAX {
                return;
            }
            match self.choose_piece(conn, file_id) {
                Some(choice) => self.assign(conn, file_id, choice),
                None => return,
            }
        }
    }

    /// A block of a piece assigned to `conn` that nobody received and `conn` has not requested.
    fn next_block(&self, conn: ConnId, file_id: FileId) -> Option<(PieceIndex, u32)> {
        let remote = self.remotes.get(&conn)?;
        let download = self.files.get(&file_id)?.download.as_ref()?;
        let assigned = remote.assigned.range((file_id, PieceIndex(0))..=(file_id, PieceIndex(u32::MAX)));
        download.next_block(conn, assigned.map(|(_, piece)| *piece))
    }

    /// The next piece for `conn` (see [`super::downloads::Download::choose`]).
    fn choose_piece(&mut self, conn: ConnId, file_id: FileId) -> Option<Choice> {
        let remote = self.remotes.get(&conn)?;
        let chooser = Chooser {
            conn,
            peer_id: remote.peer_id?,
            have: remote.files.get(&file_id)?,
            busy: !remote.in_flight.is_empty(),
        };
        let entry = self.files.get(&file_id)?;
        let (remotes, now) = (&self.remotes, self.now);
        let lagging = |c: ConnId| remotes.get(&c).is_none_or(|r| lags(r, now));
        entry.download.as_ref()?.choose(chooser, &entry.have, &mut self.rng, lagging)
    }

    /// Gives `conn` the piece `choose_piece` chose for it.
    fn assign(&mut self, conn: ConnId, file_id: FileId, choice: Choice) {
        let Some((manifest, download, _)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            unreachable!("a piece is chosen only for a download whose manifest is known")
        };
        let (Choice::Fresh(piece) | Choice::Endgame(piece)) = choice;
        let piece = download.assign(choice, manifest.piece_len(piece), conn);
        let Some(remote) = self.remotes.get_mut(&conn) else { unreachable!("a piece is chosen only for a remote") };
        remote.assigned.insert((file_id, piece));
        let from = remote.addr;
        self.event(Event::PieceRequested { file_id, piece, from });
    }

    /// Requests the block `next_block` offered `conn`.
    fn request_block(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex, block: u32) {
        let Some((manifest, download, _)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            unreachable!("a block is offered only of a download whose manifest is known")
        };
        let (offset, len) = block_span(manifest.piece_len(piece), block);
        download.request(piece, block, conn);
        let Some(remote) = self.remotes.get_mut(&conn) else { unreachable!("a block is offered only to a remote") };
        remote.start_request((file_id, piece, offset), self.now);
        self.send(conn, Message::Request { file_id, piece, offset, len });
    }

    /// A block arrived. A block requested and then cancelled (late) is still taken while its
    /// piece is being fetched and lacks it; other unrequested blocks are dropped. A block of the
    /// wrong length is a protocol violation.
    pub(super) fn on_data(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex, offset: u32, bytes: Bytes) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        // Bytes arriving are progress, requested or late; only a requested block is useful.
        if remote.in_flight.remove(&(file_id, piece, offset)) {
            remote.useful_at = self.now;
        }
        remote.progress_at = self.now;
        remote.rate.arrived(self.now, bytes.len() as u64);
        remote.resting_until = None;
        let sender = remote.identity();
        let Some((manifest, download, _)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            return;
        };
        let Some(piece_len) = manifest.piece(piece.0).map(|p| manifest.piece_len(p)) else { return };
        let Some(block) = block_at(piece_len, offset).filter(|_| download.is_active(piece)) else { return };
        if bytes.len() != block_span(piece_len, block).1 as usize {
            self.violation(conn, format!("block {piece}+{offset} of {} bytes", bytes.len()));
            return;
        }
        let Arrival::Taken { losers, released } = download.receive(piece, block, conn, sender) else {
            return self.schedule(conn);
        };
        for loser in &losers {
            // Another remote delivered the block it was also fetching (endgame): cancel its copy.
            if let Some(remote) = self.remotes.get_mut(loser) {
                remote.in_flight.remove(&(file_id, piece, offset));
                self.send(*loser, Message::Cancel { file_id, piece, offset });
            }
        }
        // Every block of the piece arrived: it no longer occupies any remote.
        for conn in released {
            if let Some(remote) = self.remotes.get_mut(&conn) {
                remote.assigned.remove(&(file_id, piece));
            }
        }
        self.push(Output::WriteBlock { file_id, piece, offset, bytes });
        // Only the sender and the remotes whose copy was cancelled have room in their pipelines.
        self.schedule(conn);
        for loser in losers {
            self.schedule(loser);
        }
    }

    /// The remote will not serve a block: give the piece to someone else. A remote that is
    /// `Busy` (its upload slots and line are taken) keeps its pieces and is asked again after
    /// [`BUSY_RETRY_DELAY`]; any other refusal means it will not serve this piece.
    pub(super) fn on_reject(
        &mut self,
        conn: ConnId,
        file_id: FileId,
        piece: PieceIndex,
        offset: u32,
        reason: RejectReason,
    ) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        if !remote.in_flight.remove(&(file_id, piece, offset)) {
            return;
        }
        if reason == RejectReason::Busy {
            remote.resting_until = Some(self.now + BUSY_RETRY_DELAY);
            self.unassign(conn, file_id, piece);
        } else {
            self.give_up_on(conn, file_id, piece);
        }
        self.schedule_all();
    }

    /// Stops asking `conn` for `piece` (it refused it): the piece goes to another
    /// remote, and this connection is not asked for it again.
    pub(super) fn give_up_on(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        if remote.files.get_mut(&file_id).is_some_and(|have| have.unset(piece)) {
            if let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()) {
                download.count_lost_piece(piece);
            }
        }
        self.unassign(conn, file_id, piece);
    }

    pub(super) fn on_block_written(
        &mut self,
        file_id: FileId,
        piece: PieceIndex,
        offset: u32,
        result: Result<(), StoreError>,
    ) {
        if let Err(reason) = result {
            self.fail_download(file_id, format!("cannot write piece {piece}: {reason}"));
            return;
        }
        let Some((manifest, download, _)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            unreachable!("a write completes a block of a download whose manifest is known")
        };
        let block = block_at(manifest.piece_len(piece), offset);
        debug_assert!(block.is_some(), "a write completes a block this peer asked to write");
        if block.is_some_and(|block| download.written(piece, block)) {
            self.push(Output::HashPiece { file_id, piece });
        }
    }

    pub(super) fn on_piece_hashed(&mut self, file_id: FileId, piece: PieceIndex, result: Result<Digest, StoreError>) {
        let digest = match result {
            Ok(digest) => digest,
            Err(reason) => return self.fail_download(file_id, format!("cannot read back piece {piece}: {reason}")),
        };
        let Some((manifest, download, have)) = self.files.get_mut(&file_id).and_then(FileEntry::download_parts) else {
            unreachable!("a hash completes a piece of a download whose manifest is known")
        };
        let matches = digest == manifest.piece_hash(piece);
        let (senders, room_again, guilty) = match download.hashed(piece, matches, have) {
            Verdict::Verified { senders, room_again, guilty } => (senders, room_again, guilty),
            Verdict::Corrupt { senders, guilty } => {
                for (_, addr) in senders.keys() {
                    self.event(Event::PieceCorrupt { file_id, piece, from: *addr });
                }
                if let Some((peer_id, addr)) = guilty {
                    self.strike(peer_id, addr);
                }
                return self.schedule_all();
            }
        };
        if have.count() == 1 {
            // Downloaders that started together get their first pieces about now: ask soon
            // for the holders among them.
            download.locate_mut().ask_soon(self.now);
        }
        let progress = self.progress(file_id);
        // `Peer::new` checked there is at least one tracker.
        let from = senders.keys().next().map_or(self.config.trackers[0], |(_, addr)| *addr);
        self.push(Output::PieceVerified { file_id, piece });
        self.event(Event::PieceVerified { file_id, piece, from, progress });
        self.queue_have(file_id, piece, progress.have == 1);
        if progress.have == progress.total {
            self.finalize(file_id);
        } else if room_again {
            self.schedule_all();
        }
        if let Some((peer_id, addr)) = guilty {
            // Its blocks of an earlier attempt were the bad ones (see `downloads`).
            self.strike(peer_id, addr);
        }
    }

    fn progress(&self, file_id: FileId) -> Progress {
        let entry = &self.files[&file_id];
        let have_bytes = entry.manifest.as_ref().map_or(0, |m| {
            // Every held piece is full size but the last, which may be short.
            let last = PieceIndex(m.piece_count().saturating_sub(1));
            let short = if entry.have.has(last) { m.piece_size_bytes() - m.piece_len(last) } else { 0 };
            u64::from(entry.have.count()) * u64::from(m.piece_size_bytes()) - u64::from(short)
        });
        let peers = entry.download.as_ref().map_or(0, |d| d.holders());
        Progress { have: entry.have.count(), total: entry.have.len(), have_bytes, peers }
    }

    /// Queues `piece` for the next batched `Haves` to the remotes and the tracker (see
    /// `haves`).
    fn queue_have(&mut self, file_id: FileId, piece: PieceIndex, first: bool) {
        if self.haves.add(file_id, piece, first, self.now) {
            self.flush_haves();
        }
    }

    /// Sends the pieces verified since the last batch to the tracker and to every remote that
    /// exchanged bitfields for the file, except those that told us they hold the whole file. A
    /// remote that told us only some pieces hears of every piece, also of those it holds: a
    /// seeder that offers pieces a few at a time (see `offers`) learns this way which of its
    /// offers we fetched elsewhere. (A remote whose bitfield went out within the batch may hear
    /// of a piece twice; that changes nothing.)
    pub(super) fn flush_haves(&mut self) {
        let recent = self.haves.take();
        let mut batches = Vec::new();
        for (file_id, pieces) in &recent {
            let hearing = self.remotes.iter().filter(|(_, r)| {
                r.bitfield_sent.contains(file_id) && !r.files.get(file_id).is_some_and(Bitfield::is_full)
            });
            for (conn, _) in hearing {
                batches.push((*conn, *file_id, pieces.clone()));
            }
        }
        for conn in self.tracker.ready_conns() {
            batches.extend(recent.iter().map(|(file_id, pieces)| (conn, *file_id, pieces.clone())));
        }
        for (conn, file_id, pieces) in batches {
            self.send(conn, Message::Haves { file_id, pieces });
        }
    }

    fn strike(&mut self, peer_id: PeerId, addr: std::net::SocketAddr) {
        if self.bans.strike(peer_id, addr, self.now).is_none() {
            return;
        }
        self.event(Event::PeerBanned { peer_id, addr });
        for conn in self.remotes.of_peer(peer_id) {
            self.close_remote(conn);
        }
    }

    /// Every piece is verified: ask the driver to move the file into place.
    pub(super) fn finalize(&mut self, file_id: FileId) {
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()) else { return };
        download.finalizing();
        self.push(Output::Finalize { file_id });
    }

    pub(super) fn on_finalized(&mut self, file_id: FileId, result: Result<(), StoreError>) {
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        if !entry.download.as_ref().is_some_and(|d| d.phase() == Phase::Finalizing) {
            return;
        }
        match result {
            Ok(()) => {
                entry.download = None;
                self.event(Event::Complete { file_id });
            }
            Err(reason) => self.fail_download(file_id, format!("cannot move the finished file into place: {reason}")),
        }
    }

    /// The download cannot go on: stop fetching it and say why. Verified pieces stay served.
    pub(super) fn fail_download(&mut self, file_id: FileId, reason: String) {
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()) else { return };
        if !download.fail() {
            return;
        }
        let assigned: Vec<(ConnId, PieceIndex)> = self
            .remotes
            .iter()
            .flat_map(|(c, r)| r.assigned.iter().filter(|(f, _)| *f == file_id).map(move |(_, p)| (*c, *p)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for (conn, piece) in assigned {
            self.unassign(conn, file_id, piece);
        }
        self.event(Event::DownloadFailed { file_id, reason });
    }
}
