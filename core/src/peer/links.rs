//! Peer-to-peer connections: opening them to the holders the tracker names, the `Hello`
//! handshake, the manifest from a holder when the download does not know it yet, the bitfield
//! exchange, `Have` updates, and tearing a connection down (which hands its pieces back to the
//! scheduler). Also the handling of a `Located` answer, and carrying out `slots`' decision on
//! each inbound connection (accept, evict an idle one for it, or refuse).

use std::net::SocketAddr;

use crate::bitfield::Bitfield;
use crate::ids::{ConnId, FileId, PeerId, PieceIndex};
use crate::limits::{HANDSHAKE_TIMEOUT, HOLDERS_PER_PIECE_MAX, IDLE_TIMEOUT};
use crate::machine::{Event, Output};
use crate::manifest::Manifest;
use crate::wire::{ErrorCode, Holders, Message, PeerAddr, PROTOCOL_VERSION};

use super::remote::{Remote, Stage};
use super::slots::{admit, Admission, Refusal};
use super::Peer;

impl Peer {
    /// Handles the tracker's answer to `Locate`: learns the manifest if new (or connects to
    /// the holders to ask them for it), connects to holders of wanted pieces, and reports
    /// pieces no live peer holds.
    pub(super) fn on_located(&mut self, file_id: FileId, manifest: Option<Manifest>, holders: &Holders) {
        let now = self.now;
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        if let Some(download) = entry.download.as_mut() {
            download.locate_mut().answered(now, Some(holders.len()));
        }
        if entry.manifest.is_none() {
            match manifest {
                Some(manifest) if manifest.file_id() == file_id => self.adopt_manifest(file_id, manifest),
                // Holders only: they are asked for the manifest once connected.
                None => {
                    for peer in holders.peers() {
                        self.connect_for(peer, file_id);
                    }
                    return;
                }
                // Not what was asked for: the next locate asks again.
                Some(_) => return,
            }
        }
        let Some(entry) = self.files.get(&file_id) else { return };
        if !entry.is_fetching() || holders.piece_count() != entry.have.len() {
            return;
        }
        let mut wanted: Vec<(PieceIndex, Vec<SocketAddr>)> =
            entry.have.iter_missing().map(|p| (p, Vec::new())).collect();
        for (peer, bits) in holders.iter() {
            let mut useful = false;
            for (_, addrs) in wanted.iter_mut().filter(|(piece, _)| bits.has(*piece)) {
                useful = true;
                if addrs.len() < HOLDERS_PER_PIECE_MAX {
                    addrs.push(peer.addr);
                }
            }
            if useful {
                self.connect_for(peer, file_id);
            }
        }
        self.report_missing(file_id, &wanted);
        self.event(Event::Located { file_id, holders: wanted });
    }

    /// The first `Located` of a download: size the piece state and ask the driver to store it.
    fn adopt_manifest(&mut self, file_id: FileId, manifest: Manifest) {
        // Only a download starts without its manifest, and it keeps its `Download` until the
        // file is complete.
        let Some(entry) = self.files.get_mut(&file_id) else { unreachable!("a manifest is adopted for a download") };
        let Some(download) = entry.download.as_mut() else { unreachable!("a download without a manifest") };
        let have = Bitfield::new(manifest.piece_count());
        download.init_slots(&have);
        entry.have = have;
        entry.manifest = Some(manifest.clone());
        let empty = manifest.piece_count() == 0;
        self.push(Output::Allocate { manifest });
        self.announce(file_id, false);
        if empty {
            self.scheduler().finalize(file_id);
        }
        // Holders that waited for the manifest exchange bitfields now.
        let waiting: Vec<ConnId> = self
            .remotes
            .iter()
            .filter(|(_, r)| r.stage == Stage::Ready && r.wanted.contains(&file_id))
            .map(|(c, _)| *c)
            .collect();
        for conn in waiting {
            if let Some(remote) = self.remotes.get_mut(&conn) {
                remote.wanted.remove(&file_id);
            }
            self.want_file(conn, file_id);
        }
    }

    /// Asks the ready remote `conn` for the manifest of `file_id`, unless another holder was
    /// asked within the last [`crate::limits::LOCATE_INTERVAL`] (one answer is enough).
    fn ask_manifest(&mut self, conn: ConnId, file_id: FileId) {
        let now = self.now;
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()) else { return };
        if download.ask_manifest(now) {
            self.send(conn, Message::GetManifest { file_id });
        }
    }

    fn on_get_manifest(&mut self, conn: ConnId, file_id: FileId) {
        match self.files.get(&file_id).and_then(|e| e.manifest.clone()) {
            Some(manifest) => self.send(conn, Message::Manifest { manifest: Box::new(manifest) }),
            None => self.send(conn, Message::error(Some(file_id), ErrorCode::UnknownFile, "file not known here")),
        }
    }

    /// A holder sent a manifest: adopted if a download is waiting for it (its id is the hash
    /// of its contents, so it cannot be forged); otherwise it is late or unasked and dropped.
    fn on_manifest(&mut self, manifest: Manifest) {
        let file_id = manifest.file_id();
        if self.files.get(&file_id).is_some_and(|e| e.manifest.is_none() && e.is_fetching()) {
            self.adopt_manifest(file_id, manifest);
        }
    }

    fn report_missing(&mut self, file_id: FileId, wanted: &[(PieceIndex, Vec<SocketAddr>)]) {
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()) else {
            unreachable!("missing pieces are reported for a download being fetched")
        };
        if let Some(pieces) = download.newly_missing(wanted) {
            self.event(Event::PiecesMissing { file_id, pieces });
        }
    }

    /// Makes sure a connection to `peer` exists that exchanges bitfields for `file_id`.
    pub(super) fn connect_for(&mut self, peer: PeerAddr, file_id: FileId) {
        if peer.peer_id == self.peer_id
            || self.bans.is_banned(&peer.peer_id, self.now)
            || self.bans.is_addr_banned(&peer.addr, self.now)
        {
            return;
        }
        if let Some(conn) = self.remotes.find(peer.peer_id, peer.addr) {
            self.want_file(conn, file_id);
            return;
        }
        if !self.remotes.may_open(peer.addr, self.now) {
            return;
        }
        let conn = self.new_conn();
        let mut remote = Remote::outbound(peer.addr, Some(peer.peer_id), self.now);
        remote.wanted.insert(file_id);
        self.remotes.open(conn, remote);
        self.push(Output::Connect { conn, addr: peer.addr });
    }

    /// Sends our bitfield for `file_id` on `conn` now, or once its handshake is done and the
    /// manifest is known (a ready remote is asked for it meanwhile).
    fn want_file(&mut self, conn: ConnId, file_id: FileId) {
        let manifest_known = self.files.get(&file_id).is_some_and(|e| e.manifest.is_some());
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        if remote.stage != Stage::Ready || !manifest_known {
            remote.wanted.insert(file_id);
            if remote.stage == Stage::Ready {
                self.ask_manifest(conn, file_id);
            }
        } else if remote.bitfield_sent.insert(file_id) {
            if let Some(message) = self.bitfield_for(conn, file_id) {
                self.send(conn, message);
            }
        }
    }

    /// A peer-to-peer connection is open and its remote proved the id `proven`: a holder we
    /// dialled must prove the id the tracker named for it, and a banned id is closed at once.
    pub(super) fn on_remote_connected(&mut self, conn: ConnId, addr: SocketAddr, proven: PeerId) {
        if self.bans.is_banned(&proven, self.now) || proven == self.peer_id {
            self.push(Output::Close { conn });
            self.on_remote_gone(conn);
            return;
        }
        match conn {
            ConnId::Outbound(_) => {
                let Some(remote) = self.remotes.get_mut(&conn) else {
                    // Opened after we gave up on it.
                    self.push(Output::Close { conn });
                    return;
                };
                if let Some(named) = remote.peer_id.filter(|named| *named != proven) {
                    let reason = format!("{addr} proved peer id {proven}, not {named} as the tracker named it");
                    return self.violation(conn, reason);
                }
                remote.peer_id = Some(proven);
                remote.stage = Stage::AwaitHello;
                remote.opened = self.now;
                remote.last_heard = self.now;
            }
            ConnId::Inbound(_) => {
                let admission = if self.left {
                    Admission::Refuse(Refusal::Busy)
                } else {
                    admit(&self.remotes, addr.ip(), self.now)
                };
                match admission {
                    Admission::Accept => {}
                    Admission::Evict(idle) => {
                        self.send(idle, Message::error(None, ErrorCode::Overloaded, "slot given to a newcomer"));
                        self.close_remote(idle);
                    }
                    Admission::Refuse(why) => {
                        self.send(conn, Message::error(None, ErrorCode::Overloaded, why.detail()));
                        self.push(Output::Close { conn });
                        return;
                    }
                }
                let mut remote = Remote::inbound(addr, self.now);
                remote.peer_id = Some(proven);
                self.remotes.accept(conn, remote);
            }
        }
        let hello = self.hello();
        self.send(conn, hello);
    }

    pub(super) fn on_remote_message(&mut self, conn: ConnId, message: Message) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        remote.last_heard = self.now;
        if remote.stage != Stage::Ready {
            match message {
                Message::Hello(hello) => self.on_remote_hello(conn, hello),
                // Refused (e.g. the remote is full): not a violation; try it again later.
                Message::Error { .. } if remote.outbound => {
                    let addr = remote.addr;
                    self.remotes.back_off(addr, self.now);
                    self.close_remote(conn);
                }
                other => self.violation(conn, format!("{} before hello", other.kind())),
            }
            return;
        }
        match message {
            Message::Bitfield { file_id, have } => self.on_remote_bitfield(conn, file_id, have),
            Message::Have { file_id, piece } => self.on_remote_haves(conn, file_id, &[piece]),
            Message::Haves { file_id, pieces } => self.on_remote_haves(conn, file_id, &pieces),
            Message::Request { file_id, piece, offset, len } => self.on_request(conn, file_id, piece, offset, len),
            Message::Cancel { file_id, piece, offset } => self.on_cancel(conn, file_id, piece, offset),
            Message::Data { file_id, piece, offset, bytes } => self.on_data(conn, file_id, piece, offset, bytes),
            Message::Reject { file_id, piece, offset, reason } => {
                self.scheduler().on_reject(conn, file_id, piece, offset, reason)
            }
            Message::GetManifest { file_id } => self.on_get_manifest(conn, file_id),
            Message::Manifest { manifest } => self.on_manifest(*manifest),
            Message::Peers { file_id, peers } => self.on_peers(conn, file_id, peers),
            Message::Error { file_id: Some(file_id), code: ErrorCode::UnknownFile, .. } => {
                self.forget_remote_file(conn, file_id)
            }
            Message::Error { .. } => {}
            other => self.violation(conn, format!("unexpected {}", other.kind())),
        }
    }

    fn on_remote_hello(&mut self, conn: ConnId, hello: crate::wire::Hello) {
        if hello.version != PROTOCOL_VERSION {
            let detail = format!("protocol version {} here, {} there", PROTOCOL_VERSION, hello.version);
            self.send(conn, Message::error(None, ErrorCode::VersionMismatch, detail.clone()));
            self.violation(conn, detail);
            return;
        }
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        if remote.peer_id != Some(hello.peer_id) {
            let proven = remote.peer_id.map_or_else(|| "nothing".to_owned(), |id| id.to_string());
            return self
                .violation(conn, format!("hello claims peer id {}, but its key proves {proven}", hello.peer_id));
        }
        if !remote.outbound && hello.listen_port != 0 {
            remote.addr = SocketAddr::new(remote.addr.ip(), hello.listen_port);
        }
        remote.stage = Stage::Ready;
        let wanted: Vec<FileId> = std::mem::take(&mut remote.wanted).into_iter().collect();
        for file_id in wanted {
            self.want_file(conn, file_id);
        }
    }

    fn on_remote_bitfield(&mut self, conn: ConnId, file_id: FileId, have: Bitfield) {
        let Some(piece_count) = self.piece_count(file_id) else {
            self.send(conn, Message::error(Some(file_id), ErrorCode::UnknownFile, "file not known here"));
            return;
        };
        if have.len() != piece_count {
            self.violation(conn, format!("bitfield of {} bits for {piece_count} pieces", have.len()));
            return;
        }
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        let old = remote.files.insert(file_id, have.clone());
        if let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()) {
            if let Some(old) = old {
                download.count_holder(&old, false);
            }
            download.count_holder(&have, true);
        }
        self.want_file(conn, file_id);
        self.scheduler().schedule(conn);
    }

    /// The remote verified more pieces; it is asked for them if we want them.
    fn on_remote_haves(&mut self, conn: ConnId, file_id: FileId, pieces: &[PieceIndex]) {
        let Some(piece_count) = self.piece_count(file_id) else { return };
        if let Some(bad) = pieces.iter().find(|p| p.0 >= piece_count) {
            self.violation(conn, format!("have for piece {bad} of a {piece_count}-piece file"));
            return;
        }
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        let first = !remote.files.contains_key(&file_id);
        let have = remote.files.get_or_insert_with(file_id, || Bitfield::new(piece_count));
        let new: Vec<PieceIndex> = pieces.iter().copied().filter(|p| have.set(*p)).collect();
        self.offer_held(conn, file_id, &new);
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download.as_mut()) else { return };
        // A remote first heard of by its `Haves` is a holder too.
        if download.count_new_pieces(first, &new) {
            self.scheduler().schedule(conn);
        }
    }

    /// The number of pieces of a file whose manifest is known.
    fn piece_count(&self, file_id: FileId) -> Option<u32> {
        self.files.get(&file_id)?.manifest.as_ref().map(|m| m.piece_count())
    }

    /// The remote does not have a file after all: stop asking it for that file. The exchange
    /// of the file on this connection is over: a bitfield it sends later starts it over.
    fn forget_remote_file(&mut self, conn: ConnId, file_id: FileId) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        remote.bitfield_sent.remove(&file_id);
        let old = remote.files.remove(&file_id);
        if let (Some(old), Some(download)) = (old, self.files.get_mut(&file_id).and_then(|e| e.download.as_mut())) {
            download.count_holder(&old, false);
        }
        self.scheduler().release_file(conn, file_id);
        self.scheduler().schedule_all();
    }

    /// The remote broke the protocol: report and close.
    pub(super) fn violation(&mut self, conn: ConnId, reason: String) {
        self.event(Event::ProtocolViolation { conn, reason });
        if self.tracker.owns(conn) {
            self.push(Output::Close { conn });
            self.on_tracker_lost(conn);
        } else {
            self.close_remote(conn);
        }
    }

    /// Closes a connection we decided to end.
    pub(super) fn close_remote(&mut self, conn: ConnId) {
        if self.remotes.contains_key(&conn) {
            self.push(Output::Close { conn });
            self.on_remote_gone(conn);
        }
    }

    /// A peer-to-peer connection is gone: give its pieces back to the scheduler.
    pub(super) fn on_remote_gone(&mut self, conn: ConnId) {
        let Some(remote) = self.remotes.remove(&conn) else { return };
        if remote.outbound && remote.stage != Stage::Ready {
            self.remotes.back_off(remote.addr, self.now);
        }
        for (file_id, have) in remote.files.iter() {
            if let Some(download) = self.files.get_mut(file_id).and_then(|e| e.download.as_mut()) {
                download.count_holder(have, false);
            }
            if !have.is_full() {
                self.downloader_gone(*file_id);
            }
        }
        let orphaned = self.scheduler().conn_gone(conn, &remote.requests);
        self.uploads.drop_conn(conn);
        if orphaned {
            // Its pieces are orphans now: other remotes may take them.
            self.scheduler().schedule_all();
        }
    }

    /// Closes silent or idle connections, and takes the pieces of stalled remotes elsewhere (a
    /// stalled remote rests for a while: no new requests; see `Scheduler::wake_rested`).
    pub(super) fn remote_timeouts(&mut self) {
        let now = self.now;
        let mut to_close = Vec::new();
        let mut stalled = Vec::new();
        for (conn, remote) in self.remotes.iter() {
            if remote.stage != Stage::Ready {
                if remote.opened + HANDSHAKE_TIMEOUT <= now {
                    to_close.push(*conn);
                }
            } else if let Some(deadline) = remote.requests.stall_deadline() {
                if deadline <= now {
                    stalled.push(*conn);
                }
            } else if self.uploads.serving(*conn) == 0 && remote.last_heard + IDLE_TIMEOUT <= now {
                to_close.push(*conn);
            }
        }
        if stalled.is_empty() && to_close.is_empty() {
            return;
        }
        for conn in stalled {
            self.scheduler().stalled(conn);
        }
        for conn in to_close {
            self.close_remote(conn);
        }
        self.scheduler().schedule_all();
    }
}
