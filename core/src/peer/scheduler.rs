//! What to request from whom, and what to do with what arrives.
//!
//! Each ready remote keeps block requests in flight for about `REQUEST_PIPELINE_TIME` of its
//! measured delivery rate (at least one block, at most `REQUESTS_IN_FLIGHT_PER_CONN_MAX`), so a
//! slow remote holds up few pieces. Blocks come first from the pieces already assigned to it; a new piece is the rarest among
//! the connected remotes (random tie-break) that it holds; partially fetched pieces whose remote
//! went away come before fresh ones. When no piece is left to start and a remote's pipeline is
//! empty, it joins a piece another remote is fetching (endgame) and the slower copy is cancelled
//! as blocks arrive. Every block is written by the driver, every written piece is hashed, and a piece that
//! fails its hash strikes its senders (banned after `STRIKES_BEFORE_BAN_COUNT`).

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::error::StoreError;
use crate::ids::{ConnId, Digest, FileId, PeerId, PieceIndex};
use crate::limits::{
    ASSIGNEES_PER_PIECE_MAX, BLOCK_BYTES, HAVE_BATCH_INTERVAL, PIECES_ACTIVE_PER_FILE_MAX,
    PIECES_ASSIGNED_PER_CONN_MAX, STRIKES_BEFORE_BAN_COUNT,
};
use crate::machine::{Event, Output, Progress};
use crate::wire::Message;

use super::pieces::{block_at, block_span, Phase, Slot};
use super::remote::Stage;
use super::Peer;

/// A piece chosen for a remote, and whether it joins another remote's work (endgame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    Fresh(PieceIndex),
    Endgame(PieceIndex),
}

impl Peer {
    /// Fills the pipeline of every ready remote.
    pub(super) fn schedule_all(&mut self) {
        let conns: Vec<ConnId> =
            self.remotes.iter().filter(|(_, r)| r.stage == Stage::Ready).map(|(c, _)| *c).collect();
        for conn in conns {
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

    /// A block of a piece assigned to `conn` that nobody received and `conn` has not requested;
    /// outside endgame also one no other remote requested.
    fn next_block(&self, conn: ConnId, file_id: FileId) -> Option<(PieceIndex, u32)> {
        let remote = self.remotes.get(&conn)?;
        let download = self.files.get(&file_id)?.download.as_ref()?;
        for (_, piece) in remote.assigned.range((file_id, PieceIndex(0))..=(file_id, PieceIndex(u32::MAX))) {
            let Slot::Active(active) = &download.slots[piece.as_usize()] else { continue };
            let mine = active.assignees.get(&conn).copied().unwrap_or(0);
            let others = active.assignees.iter().filter(|(c, _)| **c != conn).fold(0, |acc, (_, m)| acc | m);
            let endgame = active.assignees.len() > 1;
            let taken = active.received | mine | if endgame { 0 } else { others };
            let free = active.all & !taken;
            if free != 0 {
                return Some((*piece, free.trailing_zeros()));
            }
        }
        None
    }

    /// Rarest-first choice of a piece `conn` holds, among pieces nobody is fetching; else an
    /// endgame piece someone else is fetching.
    fn choose_piece(&mut self, conn: ConnId, file_id: FileId) -> Option<Choice> {
        let remote = self.remotes.get(&conn)?;
        let remote_id = remote.peer_id?;
        let remote_have = remote.files.get(&file_id)?;
        let entry = self.files.get(&file_id)?;
        let download = entry.download.as_ref()?;
        let usable = |piece: PieceIndex| !download.bad_sources.contains(&(piece, remote_id));
        // Orphaned partial pieces first, then the rarest missing piece; one draw among the ties
        // (a draw per tie would cost more than the scan). Only pieces the remote holds can be
        // chosen: walk just those, once, with the orphans and the missing pieces as bitfields.
        let mut ties: Vec<PieceIndex> = remote_have.iter_and(&download.orphans).filter(|p| usable(*p)).collect();
        if ties.is_empty() && download.active_count < PIECES_ACTIVE_PER_FILE_MAX {
            let mut lowest = u16::MAX;
            for piece in remote_have.iter_and(&download.missing) {
                let rank = download.availability[piece.as_usize()];
                if rank > lowest || !usable(piece) {
                    continue;
                }
                if rank < lowest {
                    lowest = rank;
                    ties.clear();
                }
                ties.push(piece);
            }
        }
        if !ties.is_empty() {
            return Some(Choice::Fresh(ties[self.rng.below(ties.len())]));
        }
        // Endgame only once no piece is left to start, and only for a remote with nothing else
        // to do, one duplicate piece at a time: before, or with a busy remote, it would only
        // fetch twice what is already on its way.
        if !remote.in_flight.is_empty() || download.missing.count() > 0 {
            return None;
        }
        // Candidates are the pieces it holds that are neither ours nor missing: active (or
        // being verified), in ascending order.
        let endgame = remote_have.iter_and_not(&entry.have).filter(|p| !download.missing.has(*p)).find(|piece| {
            match &download.slots[piece.as_usize()] {
                Slot::Active(active) => {
                    !active.is_received()
                        && active.assignees.len() < ASSIGNEES_PER_PIECE_MAX
                        && !active.assignees.contains_key(&conn)
                        && usable(*piece)
                }
                _ => false,
            }
        });
        endgame.map(Choice::Endgame)
    }

    fn assign(&mut self, conn: ConnId, file_id: FileId, choice: Choice) {
        let piece = match choice {
            Choice::Fresh(piece) | Choice::Endgame(piece) => piece,
        };
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        let (Some(manifest), Some(download)) = (entry.manifest.as_ref(), entry.download.as_mut()) else { return };
        let piece_len = manifest.piece_len(piece);
        download.start(piece, piece_len);
        download.add_assignee(piece, conn);
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        remote.assigned.insert((file_id, piece));
        let from = remote.addr;
        self.event(Event::PieceRequested { file_id, piece, from });
    }

    fn request_block(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex, block: u32) {
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        let Some(manifest) = entry.manifest.as_ref() else { return };
        let (offset, len) = block_span(manifest.piece_len(piece), block);
        if let Some(Slot::Active(active)) = entry.download.as_mut().map(|d| d.slot_mut(piece)) {
            *active.assignees.get_or_insert_with(conn, || 0) |= 1 << block;
        }
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        remote.start_request((file_id, piece, offset), self.now);
        self.send(conn, Message::Request { file_id, piece, offset, len });
    }

    /// A block arrived. A block requested and then cancelled (late) is still taken while its
    /// piece is being fetched and lacks it; other unrequested blocks are dropped. A block of the
    /// wrong length is a protocol violation.
    pub(super) fn on_data(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex, offset: u32, bytes: Bytes) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        // Bytes arriving are progress, requested or late.
        remote.in_flight.remove(&(file_id, piece, offset));
        remote.progress_at = self.now;
        remote.rate.arrived(self.now, bytes.len() as u64);
        remote.resting_until = None;
        let sender = remote.identity();
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        let Some(manifest) = entry.manifest.as_ref() else { return };
        let piece_len = manifest.piece_len(piece);
        let Some(block) = block_at(piece_len, offset) else { return };
        let Some(Slot::Active(active)) = entry.download.as_mut().map(|d| d.slot_mut(piece)) else { return };
        let bit = 1u64 << block;
        if bytes.len() != block_span(piece_len, block).1 as usize {
            self.violation(conn, format!("block {piece}+{offset} of {} bytes", bytes.len()));
            return;
        }
        if let Some(mask) = active.assignees.get_mut(&conn) {
            *mask &= !bit;
        }
        if active.received & bit != 0 {
            return self.schedule(conn);
        }
        active.received |= bit;
        active.senders.extend(sender);
        let losers: Vec<ConnId> = active.assignees.iter().filter(|(_, m)| **m & bit != 0).map(|(c, _)| *c).collect();
        let complete = active.is_received();
        for loser in &losers {
            self.cancel_block(*loser, file_id, piece, offset, bit);
        }
        if complete {
            // A late block may complete a piece nobody was fetching any more.
            if let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()) {
                download.orphans.unset(piece);
            }
            self.release_piece(file_id, piece);
        }
        self.push(Output::WriteBlock { file_id, piece, offset, bytes });
        // Only the sender and the remotes whose copy was cancelled have room in their pipelines.
        self.schedule(conn);
        for loser in losers {
            self.schedule(loser);
        }
    }

    /// Another remote delivered a block `loser` was also fetching (endgame): cancel its copy.
    fn cancel_block(&mut self, loser: ConnId, file_id: FileId, piece: PieceIndex, offset: u32, bit: u64) {
        if let Some(Slot::Active(active)) =
            self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()).map(|d| d.slot_mut(piece))
        {
            if let Some(mask) = active.assignees.get_mut(&loser) {
                *mask &= !bit;
            }
        }
        if let Some(remote) = self.remotes.get_mut(&loser) {
            remote.in_flight.remove(&(file_id, piece, offset));
            self.send(loser, Message::Cancel { file_id, piece, offset });
        }
    }

    /// Every block of `piece` arrived: it no longer occupies any remote.
    fn release_piece(&mut self, file_id: FileId, piece: PieceIndex) {
        let Some(Slot::Active(active)) =
            self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()).map(|d| d.slot_mut(piece))
        else {
            return;
        };
        let assignees: Vec<ConnId> = std::mem::take(&mut active.assignees).into_keys().collect();
        for conn in assignees {
            if let Some(remote) = self.remotes.get_mut(&conn) {
                remote.assigned.remove(&(file_id, piece));
            }
        }
    }

    /// The remote will not serve a block: give the piece to someone else.
    pub(super) fn on_reject(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex, offset: u32) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        if remote.in_flight.remove(&(file_id, piece, offset)) {
            self.give_up_on(conn, file_id, piece);
            self.schedule_all();
        }
    }

    /// Stops asking `conn` for `piece` (it refused it): the piece goes to another
    /// remote, and this connection is not asked for it again.
    pub(super) fn give_up_on(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        if remote.files.get_mut(&file_id).is_some_and(|have| have.unset(piece)) {
            let download = self.files.get_mut(&file_id).and_then(|e| e.download.as_mut());
            if let Some(count) = download.and_then(|d| d.availability.get_mut(piece.as_usize())) {
                *count = count.saturating_sub(1);
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
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        let Some(manifest) = entry.manifest.as_ref() else { return };
        let piece_len = manifest.piece_len(piece);
        let Some(block) = block_at(piece_len, offset) else { return };
        let Some(download) = entry.download.as_mut() else { return };
        let Slot::Active(active) = download.slot_mut(piece) else { return };
        active.written |= 1 << block;
        if active.written == active.all {
            let senders = std::mem::take(&mut active.senders);
            *download.slot_mut(piece) = Slot::Verifying { senders };
            self.push(Output::HashPiece { file_id, piece });
        }
    }

    pub(super) fn on_piece_hashed(&mut self, file_id: FileId, piece: PieceIndex, result: Result<Digest, StoreError>) {
        let digest = match result {
            Ok(digest) => digest,
            Err(reason) => return self.fail_download(file_id, format!("cannot read back piece {piece}: {reason}")),
        };
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        let (Some(manifest), Some(download)) = (entry.manifest.as_ref(), entry.download.as_mut()) else { return };
        let Slot::Verifying { senders } = download.slot_mut(piece).clone() else { return };
        if digest != manifest.piece_hash(piece) {
            download.reset(piece);
            download.bad_sources.extend(senders.iter().map(|(peer_id, _)| (piece, *peer_id)));
            for (peer_id, addr) in senders {
                self.event(Event::PieceCorrupt { file_id, piece, from: addr });
                self.strike(peer_id, addr);
            }
            self.schedule_all();
            return;
        }
        *download.slot_mut(piece) = Slot::Have;
        // At the cap no piece could start: remotes that ran dry then wait for this wake-up.
        let room_again = download.active_count == PIECES_ACTIVE_PER_FILE_MAX;
        download.active_count -= 1;
        entry.have.set(piece);
        download.debug_check(&entry.have);
        if entry.have.count() == 1 {
            // Downloaders that started together get their first pieces about now: ask soon
            // for the holders among them.
            download.ask_soon(self.now);
        }
        let progress = self.progress(file_id);
        // `Peer::new` checked there is at least one tracker.
        let from = senders.iter().next().map_or(self.config.trackers[0], |(_, addr)| *addr);
        self.push(Output::PieceVerified { file_id, piece });
        self.event(Event::PieceVerified { file_id, piece, from, progress });
        self.queue_have(file_id, piece, progress.have == 1);
        if progress.have == progress.total {
            self.finalize(file_id);
        } else if room_again {
            self.schedule_all();
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
        let peers = entry.download.as_ref().map_or(0, |d| d.holders);
        Progress { have: entry.have.count(), total: entry.have.len(), have_bytes, peers }
    }

    /// Queues `piece` for the next batched `Haves` to the remotes and the tracker. A download's
    /// first verified piece goes out at once: it makes this peer a holder the tracker can name
    /// to others, which matters most while everybody is just starting.
    fn queue_have(&mut self, file_id: FileId, piece: PieceIndex, first: bool) {
        self.recent_haves.entry(file_id).or_default().push(piece);
        if first {
            self.flush_haves();
        } else if self.haves_due.is_none() {
            self.haves_due = Some(self.now + HAVE_BATCH_INTERVAL);
        }
    }

    /// Sends the pieces verified since the last batch to the tracker and to every remote that
    /// exchanged bitfields for the file, except those that told us they hold the whole file. A
    /// remote that told us only some pieces hears of every piece, also of those it holds: a
    /// seeder that offers pieces a few at a time (see `offers`) learns this way which of its
    /// offers we fetched elsewhere. (A remote whose bitfield went out within the batch may hear
    /// of a piece twice; that changes nothing.)
    pub(super) fn flush_haves(&mut self) {
        self.haves_due = None;
        let recent = std::mem::take(&mut self.recent_haves);
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
        let strikes = self.strikes.entry(peer_id).or_insert(0);
        *strikes += 1;
        if *strikes < STRIKES_BEFORE_BAN_COUNT || !self.banned.insert(peer_id) {
            return;
        }
        self.banned_addrs.insert(addr);
        self.event(Event::PeerBanned { peer_id, addr });
        let conns: Vec<ConnId> =
            self.remotes.iter().filter(|(_, r)| r.peer_id == Some(peer_id)).map(|(c, _)| *c).collect();
        for conn in conns {
            self.close_remote(conn);
        }
    }

    /// Every piece is verified: ask the driver to move the file into place.
    pub(super) fn finalize(&mut self, file_id: FileId) {
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()) else { return };
        download.phase = Phase::Finalizing;
        self.push(Output::Finalize { file_id });
    }

    pub(super) fn on_finalized(&mut self, file_id: FileId, result: Result<(), StoreError>) {
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        if entry.download.as_ref().is_none_or(|d| d.phase != Phase::Finalizing) {
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
        if download.phase == Phase::Failed {
            return;
        }
        download.phase = Phase::Failed;
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
