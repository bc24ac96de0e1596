//! The peer state machine: shares files, downloads files from many remotes at once, and serves
//! every verified chunk from the moment it is verified.
//!
//! `Peer` routes inputs between sub-machines: every `impl Peer` block is in this file, one per
//! sub-machine it routes to and from (the tracker links, the peer-to-peer links, the download
//! pipeline, the upload side, peer exchange, local control). The sub-machines own their state
//! privately and change it only through their methods:
//! - `tracker_link`: the tracker connections, one per tracker (reconnect with backoff,
//!   handshake, when to announce), and the tracker side of a file (announce, locate schedule);
//! - `uploads`: the upload side: which remote's request is read next (upload slots,
//!   backpressure from the driver's `Sent`, the upload limit), the checks on a request
//!   (`serve`), and which chunks a whole-file holder tells each of several downloaders it has
//!   (`offers`);
//! - `scheduler`: the download pipeline: which remote fetches what (pipelining, endgame, the
//!   requests in flight per connection, which it owns) and what to do with arriving data,
//!   refusals, written blocks, hashes and the finished file;
//! - `downloads`: the chunk book of one download, a sub-machine with private state: chunk
//!   states and their one transition API (`STATE.md`), block requests per remote, chunk
//!   availability, rarest-first and endgame choice, verification outcomes; `locate`: when a
//!   download asks the tracker for holders;
//! - `links`: the decisions about peer-to-peer connections (which holders of a `Located` to
//!   dial, whether a `Hello` completes a handshake, which connections timed out);
//! - `slots`: which inbound connections are accepted, and which idle one makes way for a
//!   newcomer when all are taken;
//! - `bans`: strikes and expiring bans of remotes proven to have sent bad data; `haves`: the
//!   batching of `Haves` to remotes and the tracker; `pex`: peer exchange, telling remotes of
//!   the other peers of their files;
//! - `control`: pausing, resuming and removing a file on the user's command; it owns the count
//!   of store work in flight per file, so a removal ends only once no completion for the file
//!   can arrive;
//! - `view`: read-only views of one file or one connection, for a driver to show; `config`:
//!   how a peer is set up;
//! - `chunks` and `remote`: the per-file and per-connection state the modules share; both keep
//!   it private and change it through one method per step of a file's or a connection's life.

mod bans;
mod chunks;
mod config;
mod control;
mod downloads;
mod haves;
mod links;
mod lists;
mod locate;
mod pex;
mod remote;
mod scheduler;
mod slots;
mod tracker_link;
mod uploads;
mod view;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;

use crate::bitfield::Bitfield;
use crate::error::{CommandError, StoreError};
use crate::ids::{ChunkIndex, ConnId, Digest, FileId, PeerId, PieceIndex};
use crate::limits::{
    CONNECTION_CHECK_INTERVAL, ENDGAME_CHECK_INTERVAL, HAVE_BATCH_INTERVAL, HAVE_BATCH_INTERVAL_LARGE_CHUNKS,
    HAVE_BATCH_LARGE_CHUNK_BYTES, OFFERS_ALONE_AFTER, OFFER_WINDOW_ALONE_CHUNKS, OFFER_WINDOW_CHUNKS, OUTPUT_QUEUE_MAX,
    PEER_FILES_MAX, PEX_MESH_PEERS, REQUESTS_PER_MESSAGE_MAX,
};
use crate::machine::{Command, Completion, Event, Input, Machine, Output};
use crate::manifest::Manifest;
use crate::rng::Rng;
use crate::store::Resume;
use crate::time::{earlier, Time};
use crate::wire::{ErrorCode, Hello, Holders, Message, PeerAddr, RejectReason, Role, PROTOCOL_VERSION};

use bans::Bans;
use chunks::FileEntry;
pub use config::PeerConfig;
use control::{Completed, StoreWork};
use downloads::Phase;
use haves::HaveBatch;
use links::{HelloRefused, Timeouts};
use lists::{Block, Lists, Ready};
use pex::{Heard, Pex};
use remote::{Courtesy, Remote, Remotes};
use scheduler::{Hashed, Scheduler};
use slots::{admit, Admission, Refusal};
use tracker_link::{Handshake, LinkDue, TrackerLinks, Unknown};
use uploads::{chunk_holders, Held, OurFile, Refused, ServeJob, Uploads};
pub use view::{FileState, FileView, RemoteView};

/// The peer state machine; see the module docs and [`Machine`].
#[derive(Debug)]
pub struct Peer {
    config: PeerConfig,
    peer_id: PeerId,
    rng: Rng,
    now: Time,
    outputs: Outputs,
    next_conn: u64,
    left: bool,
    tracker: TrackerLinks,
    files: BTreeMap<FileId, FileEntry>,
    remotes: Remotes,
    /// Peers that sent bad data, by id and by serving address.
    bans: Bans,
    uploads: Uploads,
    pex: Pex,
    /// Chunks verified since the last batched `Haves` (to remotes and the trackers).
    haves: HaveBatch,
    lists: Lists,
    /// When connection deadlines are checked next.
    connections_check_at: Time,
    /// Store work in flight per file, and the files being removed (`control`).
    store_work: StoreWork,
}

impl Peer {
    /// A peer that shares and wants nothing yet. It connects to its trackers at its first
    /// timeout, which `poll_timeout` reports as due at once.
    ///
    /// Panics when `config.trackers` is empty or longer than
    /// [`TRACKERS_PER_PEER_MAX`](crate::limits::TRACKERS_PER_PEER_MAX).
    pub fn new(config: PeerConfig) -> Peer {
        let uploads = Uploads::new(config.upload_limit_bytes_per_s);
        let tracker = TrackerLinks::new(&config.trackers);
        Peer {
            peer_id: config.peer_id,
            rng: Rng::from_seed(config.seed),
            config,
            now: Time::ZERO,
            outputs: Outputs::default(),
            next_conn: 0,
            left: false,
            tracker,
            files: BTreeMap::new(),
            remotes: Remotes::new(),
            bans: Bans::new(),
            uploads,
            pex: Pex::new(),
            haves: HaveBatch::new(),
            lists: Lists::default(),
            connections_check_at: Time::ZERO,
            store_work: StoreWork::new(),
        }
    }

    /// The configuration the peer was built with.
    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The verified chunks of a file, if the peer knows it.
    pub fn have(&self, file_id: &FileId) -> Option<&Bitfield> {
        self.files.get(file_id).map(|f| f.have())
    }

    /// The manifest of a file, if the peer knows it.
    pub fn manifest(&self, file_id: &FileId) -> Option<&Manifest> {
        self.files.get(file_id).and_then(|f| f.manifest())
    }

    /// Every file the peer shares or downloads, by file id.
    pub fn file_views(&self) -> Vec<FileView> {
        self.files.iter().map(|(file_id, entry)| FileView::of(*file_id, entry)).collect()
    }

    /// Every peer-to-peer connection, open or opening, by connection id.
    pub fn remote_views(&self) -> Vec<RemoteView> {
        self.remotes.iter().map(|(conn, remote)| RemoteView::of(*conn, remote)).collect()
    }

    /// Whether `file_id` was removed and store work for it is still in flight (see
    /// [`Command::Remove`]).
    pub fn is_removing(&self, file_id: &FileId) -> bool {
        self.store_work.is_removing(file_id)
    }

    /// Block requests this peer has in flight over all connections.
    pub fn requests_in_flight(&self) -> usize {
        self.remotes.values().map(|r| r.requests().len()).sum()
    }

    /// Checks a local command against the peer's state: the caller's mistakes are errors
    /// ([`Machine::command`] returns them), not silent no-ops inside the machine.
    fn check_command(&self, command: &Command) -> Result<(), CommandError> {
        let adds_file = match command {
            Command::Share { manifest, have } => {
                if have.len() != manifest.chunk_count() {
                    return Err(CommandError::BitfieldLength { got: have.len(), expected: manifest.chunk_count() });
                }
                self.check_not_removing(&manifest.file_id())?;
                !self.files.contains_key(&manifest.file_id())
            }
            Command::Get { file_id, resume } => {
                if let Some(Resume { manifest, have, .. }) = resume {
                    if have.len() != manifest.chunk_count() {
                        return Err(CommandError::BitfieldLength { got: have.len(), expected: manifest.chunk_count() });
                    }
                }
                self.check_not_removing(file_id)?;
                !self.files.contains_key(file_id)
            }
            Command::Pause { .. } | Command::Resume { .. } | Command::Remove { .. } => {
                return self.check_control(command)
            }
            Command::Leave => false,
        };
        // A file being removed still counts against the limit.
        if adds_file && self.files.len() + self.store_work.removing_count() >= PEER_FILES_MAX {
            return Err(CommandError::TooManyFiles);
        }
        Ok(())
    }

    fn check_not_removing(&self, file_id: &FileId) -> Result<(), CommandError> {
        if self.store_work.is_removing(file_id) {
            return Err(CommandError::Removing);
        }
        Ok(())
    }

    fn push(&mut self, output: Output) {
        self.outputs.push(output);
    }

    /// The download pipeline over this peer's connections and files, for the input at hand.
    fn scheduler(&mut self) -> Scheduler<'_> {
        Scheduler::new(self.now, &mut self.remotes, &mut self.files, &mut self.rng, &mut self.outputs)
    }

    fn send(&mut self, conn: ConnId, message: Message) {
        if let (Message::Data { file_id, chunk, offset, bytes }, true) = (&message, self.remotes.contains_key(&conn)) {
            let block = (*file_id, *chunk, *offset);
            self.uploads.data_queued(conn, block, u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        }
        self.push(Output::Send { conn, message });
    }

    fn event(&mut self, event: Event) {
        self.push(Output::Event(event));
    }

    fn hello(&self) -> Message {
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: Role::Peer,
            peer_id: self.peer_id,
            listen_port: self.config.listen_port,
            listen_ip: self.config.listen_ip,
            room_calls: true,
            takes_pushes: true,
            request_batches: true,
            withdrawals: true,
        })
    }

    fn new_conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId::Outbound(self.next_conn)
    }

    /// Applies a command `check_command` took (a peer that left ignores it).
    fn on_command(&mut self, command: Command) {
        if self.left {
            return;
        }
        match command {
            Command::Share { manifest, have } => self.share(manifest, have),
            Command::Get { file_id, resume } => self.get(file_id, resume),
            Command::Pause { file_id } => self.pause(file_id),
            Command::Resume { file_id } => self.resume(file_id),
            Command::Remove { file_id } => self.remove(file_id),
            Command::Leave => self.leave(),
        }
    }

    fn share(&mut self, manifest: Manifest, have: Bitfield) {
        let file_id = manifest.file_id();
        let have = self.lists.checkable(&manifest, &have);
        match self.files.get_mut(&file_id) {
            // Already known: add the chunks to what is served.
            Some(entry) if entry.manifest().is_some() => entry.add_chunks(&have),
            _ => {
                self.files.insert(file_id, FileEntry::shared(manifest, have));
            }
        }
        self.announce(file_id, true);
    }

    fn get(&mut self, file_id: FileId, resume: Option<Resume>) {
        if self.files.contains_key(&file_id) {
            return;
        }
        let resume = resume.map(|Resume { manifest, have, lists }| {
            for (piece, digests) in lists {
                self.lists.learn(&manifest, piece, &digests);
            }
            let have = self.lists.checkable(&manifest, &have);
            (manifest, have)
        });
        let entry = FileEntry::downloading(resume, self.now);
        let complete = entry.have().is_full() && entry.manifest().is_some();
        self.files.insert(file_id, entry);
        if complete {
            self.scheduler().finalize(file_id);
        } else if self.files[&file_id].manifest().is_some() {
            self.announce(file_id, true);
        }
        self.locate_due();
    }

    fn leave(&mut self) {
        self.left = true;
        for conn in self.tracker.open_conns() {
            self.send(conn, Message::Leave { file_id: None });
            self.push(Output::Close { conn });
        }
        let conns: Vec<ConnId> = self.remotes.keys().copied().collect();
        for conn in conns {
            self.close_remote(conn);
        }
    }

    fn on_completed(&mut self, completion: Completion) {
        match self.store_work.completed(&completion) {
            Completed::Route => {}
            Completed::Absorbed => return,
            Completed::Removed(file_id) => return self.event(Event::Removed { file_id }),
        }
        match completion {
            Completion::BlockWritten { file_id, chunk, offset, result } => {
                self.scheduler().on_block_written(file_id, chunk, offset, result)
            }
            Completion::ChunkHashed { file_id, chunk, result } => self.on_chunk_hashed(file_id, chunk, result),
            Completion::ChunkDigestsRead { file_id, piece, result } => {
                self.on_chunk_digests_read(file_id, piece, result)
            }
            Completion::BlockRead { conn, file_id, chunk, offset, result } => {
                self.on_block_read(conn, file_id, chunk, offset, result)
            }
            Completion::Finalized { file_id, result } => self.scheduler().on_finalized(file_id, result),
        }
    }

    fn on_message(&mut self, conn: ConnId, message: Message) {
        // A connection is a remote's or a tracker's, never both: the remotes, which carry most
        // messages, are looked up first.
        if self.remotes.contains_key(&conn) {
            self.on_remote_message(conn, message);
        } else if self.tracker.owns(conn) {
            self.on_tracker_message(conn, message);
        }
    }

    fn on_timeout(&mut self) {
        self.tracker_timeout();
        self.locate_due();
        self.scheduler().wake_rested();
        if self.connections_check_at <= self.now {
            self.connections_check_at = self.now + CONNECTION_CHECK_INTERVAL;
            self.remote_timeouts();
            self.check_endgame_soon();
        }
        self.pex_timeout();
        for (conn, file_id) in self.uploads.offers_mut().settled(self.now) {
            self.top_up(conn, file_id);
        }
        if self.haves.due().is_some_and(|due| due <= self.now) {
            self.flush_haves();
        }
        self.pump_uploads();
    }
}

/// The peer's queue of outputs, drained by the driver after every input; bounded by
/// [`OUTPUT_QUEUE_MAX`] (a full queue means a driver broke the drain rule).
#[derive(Debug, Default)]
struct Outputs(VecDeque<Output>);

impl Outputs {
    fn push(&mut self, output: Output) {
        assert!(self.0.len() < OUTPUT_QUEUE_MAX, "output queue not drained between inputs");
        self.0.push_back(output);
    }

    fn pop(&mut self) -> Option<Output> {
        self.0.pop_front()
    }
}

/// Routing to and from the download pipeline (`scheduler`), and what a verified or corrupt
/// chunk means for `haves` and `bans`.
impl Peer {
    /// A block arrived on `conn`.
    fn on_data(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, offset: u32, bytes: Bytes) {
        let manifest = self.files.get(&file_id).and_then(FileEntry::manifest);
        if manifest.is_some_and(|m| m.chunk(chunk.0).is_some() && !self.lists.can_check(m, chunk)) {
            // Its holder sends the list first on every connection, unless it thinks we know
            // it: the block cannot be checked, so it is not taken; the request times out and
            // goes elsewhere. No blame: we may have forgotten the list with the file.
            return;
        }
        if let Err(wrong) = self.scheduler().on_data(conn, file_id, chunk, offset, bytes) {
            self.violation(conn, wrong.to_string());
        }
    }

    /// The driver hashed `chunk`: a verified chunk is reported, batched for `Haves`, and may
    /// complete the file; a sender proven bad gets a strike.
    fn on_chunk_hashed(&mut self, file_id: FileId, chunk: ChunkIndex, result: Result<Digest, StoreError>) {
        let Some(manifest) = self.files.get(&file_id).and_then(FileEntry::manifest) else { return };
        let result = result.map(|digest| self.lists.checks(manifest, chunk, digest));
        match self.scheduler().on_chunk_hashed(file_id, chunk, result) {
            Hashed::Failed => {}
            Hashed::Corrupt { guilty } => {
                if let Some((peer_id, addr)) = guilty {
                    self.strike(peer_id, addr);
                }
                self.scheduler().schedule_all();
            }
            Hashed::Verified { from, progress, room_again, guilty } => {
                // `Peer::new` checked there is at least one tracker.
                let from = from.unwrap_or(self.config.trackers[0]);
                self.push(Output::ChunkVerified { file_id, chunk });
                self.event(Event::ChunkVerified { file_id, chunk, from, progress });
                self.queue_have(file_id, chunk, progress.have == 1);
                if progress.have == progress.total {
                    self.scheduler().finalize(file_id);
                } else if room_again {
                    self.scheduler().schedule_all();
                }
                self.check_endgame_soon();
                if let Some((peer_id, addr)) = guilty {
                    // Its blocks of an earlier attempt were the bad ones (see `downloads`).
                    self.strike(peer_id, addr);
                }
            }
        }
    }

    /// Queues `chunk` for the next batched `Haves` to the remotes and the tracker (see
    /// `haves`).
    fn queue_have(&mut self, file_id: FileId, chunk: ChunkIndex, first: bool) {
        let large = self
            .files
            .get(&file_id)
            .and_then(|e| e.manifest())
            .is_some_and(|m| m.chunk_bytes() >= HAVE_BATCH_LARGE_CHUNK_BYTES);
        let interval = if large { HAVE_BATCH_INTERVAL_LARGE_CHUNKS } else { HAVE_BATCH_INTERVAL };
        if self.haves.add(file_id, chunk, first, interval, self.now) {
            self.flush_haves();
        }
    }

    /// Sends the chunks verified since the last batch to the tracker and to every remote that
    /// exchanged bitfields for the file, except those that told us they hold the whole file. A
    /// remote that told us only some chunks hears of every chunk, also of those it holds: a
    /// seeder that offers chunks a few at a time (see `offers`) learns this way which of its
    /// offers we fetched elsewhere. (A remote whose bitfield went out within the batch may hear
    /// of a chunk twice; that changes nothing.)
    fn flush_haves(&mut self) {
        let recent = self.haves.take(self.now);
        let mut batches = Vec::new();
        for (file_id, chunks) in &recent {
            let hearing = self
                .remotes
                .iter()
                .filter(|(_, r)| r.has_our_bitfield(*file_id) && !r.chunks(*file_id).is_some_and(Bitfield::is_full));
            for (conn, _) in hearing {
                batches.push((*conn, *file_id, chunks.clone()));
            }
        }
        for conn in self.tracker.open_conns() {
            batches.extend(recent.iter().map(|(file_id, chunks)| (conn, *file_id, chunks.clone())));
        }
        for (conn, file_id, chunks) in batches {
            self.send(conn, Message::Haves { file_id, chunks });
        }
    }

    /// `peer_id`, serving at `addr`, is proven to have sent bad data: a strike, and at the
    /// last strike a ban that closes its connections.
    fn strike(&mut self, peer_id: PeerId, addr: SocketAddr) {
        if self.bans.strike(peer_id, addr, self.now).is_none() {
            return;
        }
        self.event(Event::PeerBanned { peer_id, addr });
        for conn in self.remotes.of_peer(peer_id) {
            self.close_remote(conn);
        }
    }
}

/// Routing to and from the tracker links (`tracker_link`).
impl Peer {
    /// On every tracker link: connects, times out a silent handshake, or re-announces,
    /// whichever is due.
    fn tracker_timeout(&mut self) {
        if self.left {
            return;
        }
        for due in self.tracker.due(self.now, self.config.announce_interval) {
            match due {
                LinkDue::Connect(link, addr) => {
                    let conn = self.new_conn();
                    self.push(Output::Connect { conn, addr });
                    self.tracker.connecting(link, conn);
                }
                LinkDue::HandshakeTimedOut(conn) => {
                    self.push(Output::Close { conn });
                    self.on_tracker_lost(conn);
                }
                LinkDue::Announce(conn) => self.announce_all(conn),
            }
        }
    }

    /// A tracker connection is open: our `Hello`, then at once every file's announce and every
    /// download's locate (see [`TrackerLinks::open_conns`]).
    fn on_tracker_connected(&mut self, conn: ConnId) {
        let hello = self.hello();
        self.send(conn, hello);
        self.tracker.connected(conn, self.now);
        self.announce_all(conn);
        let now = self.now;
        for download in self.files.values_mut().filter_map(|entry| entry.download_mut()) {
            download.locate_mut().tracker_ready(now);
        }
        self.locate_due();
    }

    /// A tracker connection closed or could not be opened: that tracker is retried after its
    /// backoff.
    fn on_tracker_lost(&mut self, conn: ConnId) {
        let Some(lost) = self.tracker.lost(conn, self.now) else { return };
        if lost.was_ready {
            self.event(Event::TrackerLost { addr: lost.addr });
        }
    }

    fn on_tracker_message(&mut self, conn: ConnId, message: Message) {
        match message {
            Message::Hello(hello) => {
                let valid = hello.version == PROTOCOL_VERSION && hello.role == Role::Tracker;
                match self.tracker.hello(conn, valid, self.now, self.config.announce_interval) {
                    Handshake::Ready(addr) => self.event(Event::TrackerConnected { addr }),
                    Handshake::Refused => {
                        let reason = format!("unexpected tracker hello {hello:?}");
                        self.event(Event::ProtocolViolation { conn, reason });
                        self.push(Output::Close { conn });
                        self.on_tracker_lost(conn);
                    }
                }
            }
            Message::Announced { file_id } => {
                let sharing = self.files.get_mut(&file_id).and_then(|entry| tracker_link::acknowledged(file_id, entry));
                if let Some(event) = sharing {
                    self.event(event);
                }
            }
            Message::Located { file_id, manifest, holders } => self.on_located(file_id, manifest.map(|m| *m), &holders),
            Message::Error { file_id: Some(file_id), code: ErrorCode::UnknownFile, .. } => {
                self.on_unknown_file(conn, file_id)
            }
            // Other errors answer a single request; the periodic announce and locate retry.
            _ => {}
        }
    }

    /// A tracker does not know `file_id`: it hears the manifest, when this peer knows it. A
    /// download that no tracker located yet reports the file unknown.
    fn on_unknown_file(&mut self, conn: ConnId, file_id: FileId) {
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        match tracker_link::unknown(entry, self.now) {
            Unknown::Announce => self.announce_to(conn, file_id, true),
            Unknown::Report => self.event(Event::FileUnknown { file_id }),
            Unknown::Ignore => {}
        }
    }

    /// Announces the chunks held of every file whose manifest is known on the tracker
    /// connection `conn`, with the manifest of a file shared here that no tracker acknowledged
    /// yet: a seeder that starts with its tracker would otherwise be told the file is unknown
    /// a round trip later, behind the answers to a crowd that asks for it meanwhile.
    fn announce_all(&mut self, conn: ConnId) {
        let announcements: Vec<Message> = self
            .files
            .iter()
            .filter_map(|(file_id, entry)| tracker_link::announcement(*file_id, entry, entry.unacknowledged()))
            .collect();
        for message in announcements {
            self.send(conn, message);
        }
    }

    /// Announces the chunks held of `file_id` on every open tracker connection (with the
    /// manifest when a tracker may not know the file).
    fn announce(&mut self, file_id: FileId, with_manifest: bool) {
        for conn in self.tracker.open_conns() {
            self.announce_to(conn, file_id, with_manifest);
        }
    }

    /// Announces the chunks held of `file_id` on the tracker connection `conn`, once its
    /// manifest is known.
    fn announce_to(&mut self, conn: ConnId, file_id: FileId, with_manifest: bool) {
        let announcement = self.files.get(&file_id).and_then(|e| tracker_link::announcement(file_id, e, with_manifest));
        if let Some(message) = announcement {
            self.send(conn, message);
        }
    }

    /// Sends `Locate` to every open tracker connection for every download whose next locate
    /// is due.
    fn locate_due(&mut self) {
        let open = self.tracker.open_conns();
        // Meshed: bitfields exchanged with PEX_MESH_PEERS remotes, as many as peer exchange
        // fills a mesh to.
        let remotes = &self.remotes;
        let meshed =
            |file_id| remotes.values().filter(|r| r.chunks(file_id).is_some()).nth(PEX_MESH_PEERS - 1).is_some();
        let due = tracker_link::locates_due(&mut self.files, self.now, !open.is_empty(), meshed);
        if open.is_empty() {
            return;
        }
        for (file_id, with_manifest) in due {
            for &conn in &open {
                self.send(conn, Message::Locate { file_id, with_manifest });
            }
            self.event(Event::LocateSent { file_id });
        }
    }
}

/// Routing to and from the peer-to-peer links (`links` decides, `slots` admits, `remote` is the
/// connection table): connections to holders, the handshake, the manifest from a holder, the
/// bitfield exchange, `Have` updates, the messages of a ready remote, and tearing a connection
/// down.
impl Peer {
    /// Handles the tracker's answer to `Locate`: learns the manifest if new (or connects to
    /// the holders to ask them for it), connects to holders of wanted chunks, and reports
    /// chunks no live peer holds.
    fn on_located(&mut self, file_id: FileId, manifest: Option<Manifest>, holders: &Holders) {
        let now = self.now;
        let Some(entry) = self.files.get_mut(&file_id) else { return };
        if let Some(download) = entry.download_mut() {
            download.locate_mut().answered(now, Some(holders.len()));
        }
        if entry.manifest().is_none() {
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
        if !entry.is_fetching() || holders.chunk_count() != entry.have().len() {
            return;
        }
        let links::Located { useful, wanted } = links::located(entry.have(), holders);
        for peer in useful {
            self.connect_for(peer, file_id);
        }
        self.report_missing(file_id, &wanted);
        self.event(Event::Located { file_id, holders: wanted });
    }

    /// The first `Located` of a download: size the chunk state and ask the driver to store it.
    fn adopt_manifest(&mut self, file_id: FileId, manifest: Manifest) {
        // Only a download starts without its manifest, and it keeps its `Download` until the
        // file is complete.
        let Some(entry) = self.files.get_mut(&file_id) else { unreachable!("a manifest is adopted for a download") };
        entry.adopt_manifest(manifest.clone());
        let empty = manifest.chunk_count() == 0;
        self.push(Output::Allocate { manifest });
        self.announce(file_id, false);
        if empty {
            self.scheduler().finalize(file_id);
        }
        // Holders that waited for the manifest exchange bitfields now.
        let waiting: Vec<ConnId> =
            self.remotes.iter().filter(|(_, r)| r.is_ready() && r.wants(file_id)).map(|(c, _)| *c).collect();
        for conn in waiting {
            if let Some(remote) = self.remotes.get_mut(&conn) {
                remote.unwant(file_id);
            }
            self.want_file(conn, file_id);
        }
    }

    /// Asks the ready remote `conn` for the manifest of `file_id`, unless another holder was
    /// asked within the last [`crate::limits::LOCATE_INTERVAL`] (one answer is enough; one that
    /// cannot answer makes way for the next at once, see [`Peer::manifest_refused`]).
    fn ask_manifest(&mut self, conn: ConnId, file_id: FileId) {
        let now = self.now;
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download_mut()) else { return };
        if download.ask_manifest(now) {
            self.send(conn, Message::GetManifest { file_id });
        }
    }

    /// A remote we may have asked for the manifest of `files` cannot send it (it does not know
    /// the file, or refused us as busy): where the manifest is still unknown and was asked,
    /// another ready remote that may send it is asked at once, not after the ask's interval.
    /// Where no remote is left to ask (none ready, none connecting), the tracker is asked again
    /// soon for other peers: its last answer may be seconds old, and the peers it names now
    /// include the newcomers that got the manifest meanwhile.
    fn manifest_refused(&mut self, files: &[FileId]) {
        let now = self.now;
        for &file_id in files {
            let Some(entry) = self.files.get_mut(&file_id).filter(|e| e.manifest().is_none()) else { continue };
            let Some(download) = entry.download_mut() else { continue };
            let asked = download.manifest_refused();
            let ready = self.remotes.iter().find(|(_, r)| r.may_send_manifest(file_id)).map(|(c, _)| *c);
            match ready {
                Some(conn) if asked => self.ask_manifest(conn, file_id),
                Some(_) => {}
                None if !self.remotes.values().any(|r| !r.is_ready() && r.wants(file_id)) => {
                    download.locate_mut().ask_soon(now);
                }
                None => {}
            }
        }
    }

    /// A remote asks for the manifest of `file_id`. Without it the remote holds nothing of the
    /// file, so the question stands for an empty bitfield: our bitfield follows the manifest,
    /// and the asker can request chunks as soon as it has both, a round trip sooner than if it
    /// sent its bitfield first.
    fn on_get_manifest(&mut self, conn: ConnId, file_id: FileId) {
        let Some(manifest) = self.files.get(&file_id).and_then(|e| e.manifest().cloned()) else {
            return self.send(conn, Message::error(Some(file_id), ErrorCode::UnknownFile, "file not known here"));
        };
        let chunk_count = manifest.chunk_count();
        self.send(conn, Message::Manifest { manifest: Box::new(manifest) });
        if self.remotes.get(&conn).is_some_and(|r| r.chunks(file_id).is_none()) {
            self.on_remote_bitfield(conn, file_id, Bitfield::new(chunk_count));
        }
    }

    /// A holder sent a manifest: adopted if a download is waiting for it (its id is the hash
    /// of its contents, so it cannot be forged); otherwise it is late or unasked and dropped.
    fn on_manifest(&mut self, manifest: Manifest) {
        let file_id = manifest.file_id();
        if self.files.get(&file_id).is_some_and(|e| e.manifest().is_none() && e.is_fetching()) {
            self.adopt_manifest(file_id, manifest);
        }
    }

    fn report_missing(&mut self, file_id: FileId, wanted: &[(ChunkIndex, Vec<SocketAddr>)]) {
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download_mut()) else {
            unreachable!("missing chunks are reported for a download being fetched")
        };
        if let Some(chunks) = download.newly_missing(wanted) {
            self.event(Event::ChunksMissing { file_id, chunks });
        }
    }

    /// Makes sure a connection to `peer` exists that exchanges bitfields for `file_id`.
    fn connect_for(&mut self, peer: PeerAddr, file_id: FileId) {
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
        self.remotes.open(conn, Remote::outbound(peer.addr, peer.peer_id, file_id, self.now));
        self.push(Output::Connect { conn, addr: peer.addr });
    }

    /// Sends our bitfield for `file_id` on `conn` now, or once its handshake is done and the
    /// manifest is known (a ready remote is asked for it meanwhile).
    fn want_file(&mut self, conn: ConnId, file_id: FileId) {
        let manifest_known = self.files.get(&file_id).is_some_and(|e| e.manifest().is_some());
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        if !remote.is_ready() || !manifest_known {
            remote.want(file_id);
            if remote.is_ready() {
                self.ask_manifest(conn, file_id);
            }
        } else if remote.send_bitfield(file_id) {
            if let Some(message) = self.bitfield_for(conn, file_id) {
                let push = self.first_offer_push(conn, &message);
                if let Some(job) = push {
                    let ServeJob { file_id, chunk, offset, len, .. } = job;
                    self.send(conn, Message::Pushed { file_id, chunk, offset, len });
                }
                self.send(conn, message);
                if let Some(ServeJob { conn, file_id, chunk, offset, len }) = push {
                    self.on_request(conn, file_id, chunk, offset, len);
                }
            }
        }
    }

    /// The block request a whole-file seeder takes on behalf of a downloader holding nothing
    /// whose first bitfield from us, `bitfield`, offers it one chunk: that chunk's first
    /// block, which the downloader would ask for a round trip later.
    fn first_offer_push(&self, conn: ConnId, bitfield: &Message) -> Option<ServeJob> {
        let Message::Bitfield { file_id, have } = bitfield else { return None };
        let remote = self.remotes.get(&conn)?;
        if !remote.takes_pushes()
            || remote.chunks(*file_id).is_none_or(|held| held.count() > 0)
            || !self.uploads.offers().sees_offers(conn, *file_id)
            || have.count() != 1
        {
            return None;
        }
        let chunk = have.iter().next()?;
        let manifest = self.files.get(file_id)?.manifest()?;
        let (offset, len) = chunks::block_span(manifest.block_bytes(), manifest.chunk_len(chunk), 0);
        Some(ServeJob { conn, file_id: *file_id, chunk, offset, len })
    }

    /// A peer-to-peer connection is open and its remote proved the id `proven`: a holder we
    /// dialled must prove the id the tracker named for it, and a banned id is closed at once.
    fn on_remote_connected(&mut self, conn: ConnId, addr: SocketAddr, proven: PeerId) {
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
                if let Err(named) = remote.connected(proven, self.now) {
                    let reason = format!("{addr} proved peer id {proven}, not {named} as the tracker named it");
                    return self.violation(conn, reason);
                }
            }
            ConnId::Inbound(_) => {
                let admission = if self.left {
                    Admission::Refuse(Refusal::Busy)
                } else {
                    admit(&self.remotes, addr.ip(), self.now)
                };
                let remote = match admission {
                    Admission::Accept => Remote::inbound(addr, proven, self.now),
                    Admission::Evict(idle) => {
                        self.send(idle, Message::error(None, ErrorCode::Overloaded, "slot given to a newcomer"));
                        self.close_remote(idle);
                        Remote::inbound(addr, proven, self.now)
                    }
                    Admission::Courtesy(kind) => Remote::courtesy(addr, proven, self.now, kind),
                    Admission::Refuse(why) => {
                        self.send(conn, Message::error(None, ErrorCode::Overloaded, why.detail()));
                        self.push(Output::Close { conn });
                        return;
                    }
                };
                self.remotes.accept(conn, remote);
            }
        }
        let hello = self.hello();
        self.send(conn, hello);
    }

    fn on_remote_message(&mut self, conn: ConnId, message: Message) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        remote.heard(self.now);
        if !remote.is_ready() {
            match message {
                Message::Hello(hello) => self.on_remote_hello(conn, hello),
                // Refused (e.g. the remote is full): not a violation; try it again later, and
                // look elsewhere for a manifest we lack.
                Message::Error { .. } if remote.is_outbound() => {
                    let addr = remote.addr();
                    let unanswered: Vec<FileId> = remote.wanted_files().collect();
                    self.remotes.back_off(addr, self.now);
                    self.close_remote(conn);
                    self.manifest_refused(&unanswered);
                }
                other => self.violation(conn, format!("{} before hello", other.kind())),
            }
            return;
        }
        if remote.is_courtesy() {
            return self.on_courtesy_message(conn, message);
        }
        match message {
            Message::Bitfield { file_id, have } => self.on_remote_bitfield(conn, file_id, have),
            Message::Have { file_id, chunk } => self.on_remote_haves(conn, file_id, &[chunk]),
            Message::Haves { file_id, chunks } => self.on_remote_haves(conn, file_id, &chunks),
            Message::Request { file_id, chunk, offset, len } => self.on_request(conn, file_id, chunk, offset, len),
            Message::Requests { file_id, blocks } => self.on_requests(conn, file_id, &blocks),
            Message::Cancel { file_id, chunk, offset } => self.on_cancel(conn, file_id, chunk, offset),
            Message::Withdraw { file_id, chunk, offset } => {
                if self.uploads.withdraw(conn, file_id, chunk, offset) {
                    self.send(conn, Message::Reject { file_id, chunk, offset, reason: RejectReason::Withdrawn });
                }
            }
            Message::Pushed { file_id, chunk, offset, len } => {
                if !self.scheduler().on_pushed(conn, file_id, chunk, offset, len) {
                    self.send(conn, Message::Cancel { file_id, chunk, offset });
                }
            }
            Message::Data { file_id, chunk, offset, bytes } => self.on_data(conn, file_id, chunk, offset, bytes),
            Message::Chunks { file_id, piece, digests } => self.on_remote_chunks(conn, file_id, piece, &digests),
            Message::Reject { file_id, chunk, offset, reason } => {
                self.scheduler().on_reject(conn, file_id, chunk, offset, reason)
            }
            Message::Room => {
                if !self.scheduler().on_room(conn) {
                    self.send(conn, Message::Pass);
                }
            }
            Message::Pass => {
                self.uploads.pass(conn);
                self.pump_uploads();
            }
            Message::GetManifest { file_id } => self.on_get_manifest(conn, file_id),
            Message::Manifest { manifest } => self.on_manifest(*manifest),
            Message::Peers { file_id, peers } => self.on_peers(conn, file_id, peers),
            Message::Error { file_id: Some(file_id), code: ErrorCode::UnknownFile, .. } => {
                self.forget_remote_file(conn, file_id);
                self.manifest_refused(&[file_id]);
            }
            // A full holder that answered our manifest ask, or referred us to other peers (or
            // gave our slot to a newcomer): it is tried again as one that refused us at once,
            // the back-off counted from when the connection opened, and a manifest we still
            // lack is asked of another ready remote.
            Message::Error { code: ErrorCode::Overloaded, .. } if remote.is_outbound() => {
                let (addr, opened) = (remote.addr(), remote.opened());
                let unanswered: Vec<FileId> = remote.wanted_files().collect();
                self.remotes.back_off(addr, opened);
                self.close_remote(conn);
                self.manifest_refused(&unanswered);
            }
            Message::Error { .. } => {}
            other => self.violation(conn, format!("unexpected {}", other.kind())),
        }
    }

    /// The first message of a remote accepted beyond the slots (see `slots`) after its
    /// handshake: a manifest ask is answered with the manifest, or, past the courtesies, the
    /// file it names with other peers of that file; then, whatever it sent, it is refused as
    /// busy.
    fn on_courtesy_message(&mut self, conn: ConnId, message: Message) {
        let kind = self.remotes.get(&conn).and_then(Remote::courtesy_kind);
        match (kind, message) {
            (Some(Courtesy::Manifest), Message::GetManifest { file_id }) => {
                if let Some(manifest) = self.files.get(&file_id).and_then(|e| e.manifest().cloned()) {
                    self.send(conn, Message::Manifest { manifest: Box::new(manifest) });
                }
            }
            (Some(Courtesy::Referral), Message::GetManifest { file_id } | Message::Bitfield { file_id, .. }) => {
                let peers = pex::referral(&self.remotes, conn, file_id, &mut self.rng);
                if !peers.is_empty() {
                    self.send(conn, Message::Peers { file_id, peers });
                }
            }
            _ => {}
        }
        self.send(conn, Message::error(None, ErrorCode::Overloaded, Refusal::Busy.detail()));
        self.close_remote(conn);
    }

    fn on_remote_hello(&mut self, conn: ConnId, hello: Hello) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        match links::hello(remote, &hello) {
            Ok(wanted) => {
                for file_id in wanted {
                    self.want_file(conn, file_id);
                }
            }
            Err(refused @ HelloRefused::Version { .. }) => {
                self.send(conn, Message::error(None, ErrorCode::VersionMismatch, refused.to_string()));
                self.violation(conn, refused.to_string());
            }
            Err(refused @ HelloRefused::WrongId { .. }) => self.violation(conn, refused.to_string()),
        }
    }

    fn on_remote_bitfield(&mut self, conn: ConnId, file_id: FileId, have: Bitfield) {
        let Some(chunk_count) = self.chunk_count(file_id) else {
            self.send(conn, Message::error(Some(file_id), ErrorCode::UnknownFile, "file not known here"));
            return;
        };
        if have.len() != chunk_count {
            self.violation(conn, format!("bitfield of {} bits for {chunk_count} chunks", have.len()));
            return;
        }
        if !self.remotes.contains_key(&conn) {
            return;
        }
        // A new bitfield may follow a removal of the file there: what it knew of it is gone.
        self.lists.forget_sent(conn, file_id);
        let old = self.remotes.set_chunks(&conn, file_id, have.clone());
        if old.is_none() && !have.is_full() {
            self.pex.newcomer(self.now);
        }
        if let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download_mut()) {
            if let Some(old) = old {
                download.count_holder(&old, false);
            }
            download.count_holder(&have, true);
        }
        self.want_file(conn, file_id);
        self.scheduler().schedule(conn);
    }

    /// A holder sent the list of `piece` before its chunks: kept to check them, when this peer
    /// fetches the file and the list is new. A list that is not the piece's is a lie.
    fn on_remote_chunks(&mut self, conn: ConnId, file_id: FileId, piece: PieceIndex, digests: &[Digest]) {
        let Some(entry) = self.files.get(&file_id) else { return };
        let (Some(manifest), Some(_)) = (entry.manifest(), entry.download()) else { return };
        let known = self.lists.knows(file_id, piece);
        if self.lists.learn(manifest, piece, digests) {
            if !known {
                self.push(Output::KeepList { file_id, piece, digests: digests.to_vec() });
            }
            return;
        }
        if let Some((peer_id, addr)) = self.remotes.get(&conn).map(Remote::identity) {
            self.strike(peer_id, addr);
        }
        self.violation(conn, format!("chunk digests that do not hash to piece {} of the manifest", piece.0));
    }

    /// The remote verified more chunks; it is asked for them if we want them.
    fn on_remote_haves(&mut self, conn: ConnId, file_id: FileId, chunks: &[ChunkIndex]) {
        let Some(chunk_count) = self.chunk_count(file_id) else { return };
        if let Some(bad) = chunks.iter().find(|p| p.0 >= chunk_count) {
            self.violation(conn, format!("have for chunk {bad} of a {chunk_count}-chunk file"));
            return;
        }
        let Some((first, new)) = self.remotes.add_chunks(&conn, file_id, chunk_count, chunks) else { return };
        self.offer_held(conn, file_id, &new);
        let Some(download) = self.files.get_mut(&file_id).and_then(|e| e.download_mut()) else { return };
        // A remote first heard of by its `Haves` is a holder too.
        if download.count_new_chunks(first, &new) {
            self.scheduler().schedule(conn);
        }
    }

    /// The number of chunks of a file whose manifest is known.
    fn chunk_count(&self, file_id: FileId) -> Option<u32> {
        self.files.get(&file_id)?.manifest().map(|m| m.chunk_count())
    }

    /// The remote does not have a file after all: stop asking it for that file. The exchange
    /// of the file on this connection is over: a bitfield it sends later starts it over.
    fn forget_remote_file(&mut self, conn: ConnId, file_id: FileId) {
        let Some(remote) = self.remotes.get_mut(&conn) else { return };
        remote.knows_not(file_id);
        self.lists.forget_sent(conn, file_id);
        let old = self.remotes.forget_file(&conn, file_id);
        if let (Some(old), Some(download)) = (old, self.files.get_mut(&file_id).and_then(|e| e.download_mut())) {
            download.count_holder(&old, false);
        }
        self.scheduler().release_file(conn, file_id);
        self.scheduler().schedule_all();
    }

    /// The remote broke the protocol: report and close.
    fn violation(&mut self, conn: ConnId, reason: String) {
        self.event(Event::ProtocolViolation { conn, reason });
        if self.tracker.owns(conn) {
            self.push(Output::Close { conn });
            self.on_tracker_lost(conn);
        } else {
            self.close_remote(conn);
        }
    }

    /// Closes a connection we decided to end.
    fn close_remote(&mut self, conn: ConnId) {
        if self.remotes.contains_key(&conn) {
            self.push(Output::Close { conn });
            self.on_remote_gone(conn);
        }
    }

    /// A peer-to-peer connection is gone: give its chunks back to the scheduler.
    fn on_remote_gone(&mut self, conn: ConnId) {
        let Some(remote) = self.remotes.remove(&conn) else { return };
        self.lists.forget_conn(conn);
        if remote.is_outbound() && !remote.is_ready() {
            self.remotes.back_off(remote.addr(), self.now);
        }
        for (file_id, have) in remote.files() {
            if let Some(download) = self.files.get_mut(file_id).and_then(|e| e.download_mut()) {
                download.count_holder(have, false);
            }
            if !have.is_full() {
                self.downloader_gone(*file_id);
            }
        }
        let orphaned = self.scheduler().conn_gone(conn, remote.requests());
        self.uploads.drop_conn(conn);
        for (file_id, _) in remote.files().filter(|(_, have)| !have.is_full()) {
            self.offer_round(*file_id);
        }
        // Its place in the upload line, if it had one, is free.
        self.pump_uploads();
        if orphaned {
            // Its chunks are orphans now: other remotes may take them.
            self.scheduler().schedule_all();
        }
    }

    /// Brings the next connection check forward to [`ENDGAME_CHECK_INTERVAL`] from now while
    /// some download has nothing left to start: then one lagging fetcher holds up the whole
    /// download, and the check is what finds it lagging (`remote_timeouts`).
    fn check_endgame_soon(&mut self) {
        if self.files.values().any(|e| e.download().is_some_and(downloads::Download::nothing_to_start)) {
            self.connections_check_at = self.connections_check_at.min(self.now + ENDGAME_CHECK_INTERVAL);
        }
    }

    /// Closes connections whose handshake or idle deadline passed, and takes the chunks of
    /// stalled remotes elsewhere (a stalled remote rests for a while: no new requests; see
    /// `Scheduler::stalled`); while a download is quiet, fills the pipelines again.
    fn remote_timeouts(&mut self) {
        let uploads = &self.uploads;
        let Timeouts { close, stalled } = links::timeouts(&self.remotes, self.now, |conn| uploads.serving(conn));
        if stalled.is_empty() && close.is_empty() {
            // A fetcher comes to lag (endgame) or to be outpaced by an idle remote
            // (`Scheduler::recall_outpaced`) by time passing, which no input announces: look
            // again while a download is quiet. While blocks still arrive, an outpaced fetcher is
            // found when some input fills the idle remote's pipeline.
            let now = self.now;
            let quiet = self.files.values().any(|e| {
                e.is_fetching() && e.manifest().zip(e.download()).is_some_and(|(m, d)| d.quiet(now, m.block_bytes()))
            });
            if quiet {
                self.scheduler().schedule_all();
            }
            return;
        }
        for conn in stalled {
            self.scheduler().stalled(conn);
        }
        for conn in close {
            self.close_remote(conn);
        }
        self.scheduler().schedule_all();
    }
}

/// The store read of `piece`'s chunk list (see `lists`).
fn read_list(manifest: &Manifest, piece: PieceIndex) -> Output {
    Output::ReadChunkDigests { file_id: manifest.file_id(), piece, chunks: manifest.chunks_of(piece).collect() }
}

/// `entry` (of `file_id`) as the seeder's offers see it.
fn our_file(file_id: FileId, entry: &FileEntry) -> OurFile<'_> {
    let chunk_bytes = entry.manifest().map_or(1, |m| m.chunk_bytes());
    OurFile { file_id, have: entry.have(), shared_here: entry.is_shared_here(), chunk_bytes }
}

/// Routing to and from the upload side (`uploads`: serving and offers).
impl Peer {
    /// A ready remote asks for a block: a request for a chunk we verified, for a block inside
    /// it, is queued for the upload side; anything else is rejected.
    fn on_request(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, offset: u32, len: u32) {
        let reject = |reason| Message::Reject { file_id, chunk, offset, reason };
        if let Err(reason) = uploads::check_request(self.files.get(&file_id), chunk, offset, len) {
            return self.send(conn, reject(reason));
        }
        let room_calls = self.remotes.get(&conn).is_some_and(Remote::room_calls);
        debug_assert!(self.remotes.contains_key(&conn), "requests come from open connections");
        let holders = chunk_holders(&self.remotes, &self.files);
        let job = ServeJob { conn, file_id, chunk, offset, len };
        match self.uploads.request(job, self.now, room_calls, holders) {
            Ok(()) => self.pump_uploads(),
            Err(Refused::Busy) => self.send(conn, reject(RejectReason::Busy)),
            Err(Refused::Covered) => {}
        }
    }

    /// A ready remote asks for several blocks at once: each is handled as a `Request` of its
    /// own, in order. More than [`REQUESTS_PER_MESSAGE_MAX`] (or fewer than two) in one
    /// message break the protocol.
    fn on_requests(&mut self, conn: ConnId, file_id: FileId, blocks: &[(ChunkIndex, u32, u32)]) {
        if !(2..=REQUESTS_PER_MESSAGE_MAX).contains(&blocks.len()) {
            return self.violation(conn, format!("requests of {} blocks in one message", blocks.len()));
        }
        for &(chunk, offset, len) in blocks {
            self.on_request(conn, file_id, chunk, offset, len);
        }
    }

    fn on_cancel(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex, offset: u32) {
        self.uploads.cancel(conn, file_id, chunk, offset);
    }

    /// `data_frames` more of `conn`'s `Data` frames left.
    fn on_sent(&mut self, conn: ConnId, data_frames: u32) {
        if let Some(remote) = self.remotes.get_mut(&conn).filter(|_| data_frames > 0) {
            remote.useful(self.now);
        }
        let files = &self.files;
        self.uploads.sent(conn, data_frames, self.now, || files.values().all(|e| e.download().is_none()));
        self.pump_uploads();
    }

    /// Starts the reads the upload side allows now, refuses the queued requests of
    /// connections that left the upload line, and calls those room in it is free for.
    fn pump_uploads(&mut self) {
        loop {
            let holders = chunk_holders(&self.remotes, &self.files);
            let Some(job) = self.uploads.next_read(self.now, holders) else {
                break;
            };
            let ServeJob { conn, file_id, chunk, offset, len } = job;
            self.read_list_ahead(file_id, chunk);
            self.push(Output::ReadBlock { conn, file_id, chunk, offset, len });
        }
        for ServeJob { conn, file_id, chunk, offset, .. } in self.uploads.take_refused() {
            self.send(conn, Message::Reject { file_id, chunk, offset, reason: RejectReason::Busy });
        }
        let holders = chunk_holders(&self.remotes, &self.files);
        for conn in self.uploads.take_calls(self.now, holders) {
            self.send(conn, Message::Room);
        }
    }

    /// A read the upload side chose finished: its block goes to the remote that asked.
    fn on_block_read(
        &mut self,
        conn: ConnId,
        file_id: FileId,
        chunk: ChunkIndex,
        offset: u32,
        result: Result<Bytes, StoreError>,
    ) {
        self.uploads.read_done(conn, file_id, chunk, offset);
        if self.remotes.contains_key(&conn) {
            match result {
                Ok(bytes) => self.deliver(Block { conn, file_id, chunk, offset, bytes }),
                Err(_) => self.send(conn, Message::Reject { file_id, chunk, offset, reason: RejectReason::ReadFailed }),
            }
        }
        self.pump_uploads();
    }

    /// A block of `chunk` is read for a remote: its piece's list, when the remote will need it
    /// and it is not known, is read from the store at the same time, not after the block.
    fn read_list_ahead(&mut self, file_id: FileId, chunk: ChunkIndex) {
        let Some(manifest) = self.files.get(&file_id).and_then(FileEntry::manifest) else { return };
        if let Some(piece) = self.lists.start_read(manifest, chunk) {
            self.push(read_list(manifest, piece));
        }
    }

    /// Sends a block read for a remote, after its piece's list when the remote needs it to
    /// check the chunk (see `lists`); a block whose list is still to be read waits for it.
    fn deliver(&mut self, block: Block) {
        let Some(manifest) = self.files.get(&block.file_id).and_then(FileEntry::manifest) else { return };
        let (file_id, piece) = (block.file_id, manifest.piece_of(block.chunk));
        let block = match self.lists.ready(manifest, block) {
            Ready::Now(block) => block,
            Ready::ListFirst(digests, block) => {
                self.send(block.conn, Message::Chunks { file_id, piece, digests: digests.into() });
                block
            }
            Ready::Waits { read } => {
                if read {
                    self.push(read_list(manifest, piece));
                }
                return;
            }
        };
        let Block { conn, file_id, chunk, offset, bytes } = block;
        let Some(to) = self.remotes.get(&conn).map(|remote| remote.addr()) else { return };
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.send(conn, Message::Data { file_id, chunk, offset, bytes });
        self.event(Event::BlockServed { file_id, chunk, len, to });
        if uploads::is_last_block(self.files.get(&file_id), chunk, offset, len) {
            if let Some(entry) = self.files.get_mut(&file_id) {
                entry.sent_whole(chunk);
            }
            self.offer_uploaded(conn, file_id, chunk);
        }
    }

    /// The store read the list of `piece` of `file_id` for blocks waiting to go out: they go,
    /// after it; a list the store cannot read, or reads wrong, fails them.
    fn on_chunk_digests_read(&mut self, file_id: FileId, piece: PieceIndex, result: Result<Vec<Digest>, StoreError>) {
        let Some(manifest) = self.files.get(&file_id).and_then(FileEntry::manifest) else { return };
        let (kept, waiting) = self.lists.read(manifest, piece, result.as_deref().ok());
        if !kept {
            let reason = match result {
                Ok(_) => "the chunks as stored do not hash to the piece's digest".to_owned(),
                Err(error) => error.to_string(),
            };
            self.event(Event::ServeFailed { file_id, piece, reason });
        }
        for block in waiting {
            if kept {
                self.deliver(block);
            } else {
                let Block { conn, file_id, chunk, offset, .. } = block;
                self.send(conn, Message::Reject { file_id, chunk, offset, reason: RejectReason::ReadFailed });
            }
        }
    }

    /// Our bitfield message for `file_id` on `conn`: what we hold, or the chunks offered to it
    /// (see `offers`).
    fn bitfield_for(&mut self, conn: ConnId, file_id: FileId) -> Option<Message> {
        let entry = self.files.get(&file_id)?;
        let holds = self.remotes.get(&conn)?.chunks(file_id);
        let ours = our_file(file_id, entry);
        let slots = self.uploads.slots();
        let have = self.uploads.offers_mut().first_bitfield(conn, ours, holds, slots, &mut self.rng);
        Some(Message::Bitfield { file_id, have })
    }

    /// We finished uploading `chunk` to `conn`.
    fn offer_uploaded(&mut self, conn: ConnId, file_id: FileId, chunk: ChunkIndex) {
        let spreading = !self.uploads.offers().spread_out(file_id);
        if self.uploads.offers_mut().uploaded(conn, file_id, chunk) {
            self.offer_room(conn, file_id);
        }
        self.offer_spread_out(file_id, spreading);
    }

    /// Tells every downloader of `file_id` that sees only offers everything left, when every
    /// chunk is in the swarm now and was not while `spreading`: the first copies are out, and
    /// the seeder's upload goes to whatever its downloaders lack most, as any holder's does.
    fn offer_spread_out(&mut self, file_id: FileId, spreading: bool) {
        if spreading && self.uploads.offers().spread_out(file_id) {
            for conn in self.uploads.offers().offered_to(file_id) {
                self.top_up(conn, file_id);
            }
        }
    }

    /// One of `conn`'s offers of `file_id` is no longer outstanding: the downloaders the
    /// offers choose are offered more, or `conn` itself when it is the only one (its window is
    /// topped up as each offer is served, not once all are).
    fn offer_room(&mut self, conn: ConnId, file_id: FileId) {
        if uploads::other_downloader(&self.remotes, conn, file_id) {
            self.offer_round(file_id);
        } else {
            self.top_up(conn, file_id);
        }
    }

    /// Offers more chunks of `file_id` to the downloaders the offers choose (see `offers`).
    fn offer_round(&mut self, file_id: FileId) {
        let Some(entry) = self.files.get(&file_id) else { return };
        for conn in self.uploads.offers().offerees(our_file(file_id, entry), self.uploads.slots()) {
            self.top_up(conn, file_id);
        }
    }

    /// `conn` reported holding `chunks` (from us or from anyone else).
    fn offer_held(&mut self, conn: ConnId, file_id: FileId, chunks: &[ChunkIndex]) {
        let holds = self.remotes.get(&conn).and_then(|remote| remote.chunks(file_id));
        let spreading = !self.uploads.offers().spread_out(file_id);
        match self.uploads.offers_mut().held(conn, file_id, holds, chunks) {
            Held::Complete => self.downloader_gone(file_id),
            Held::Room => self.offer_room(conn, file_id),
            Held::Nothing => {}
        }
        self.offer_spread_out(file_id, spreading);
    }

    /// A downloader of `file_id` left or completed: if one is left and it sees only offers, it
    /// is told everything.
    fn downloader_gone(&mut self, file_id: FileId) {
        let sole = uploads::sole_downloader(&self.remotes, file_id);
        if let Some(conn) = sole.filter(|conn| self.uploads.offers().sees_offers(*conn, file_id)) {
            self.top_up(conn, file_id);
        }
    }

    /// Offers `conn` more chunks of `file_id` and sends them in one `Haves`: a window of them,
    /// a wider one while it is the only downloader (and again when it settles, see
    /// `Offers::settles_at`), everything left once it is and has been connected for
    /// [`OFFERS_ALONE_AFTER`], or once every chunk is in the swarm.
    fn top_up(&mut self, conn: ConnId, file_id: FileId) {
        let entry = self.files.get(&file_id);
        debug_assert!(entry.is_some(), "only a file the peer holds is offered");
        let Some(entry) = entry else { return };
        let ours = our_file(file_id, entry);
        let remote = self.remotes.get(&conn);
        let holds = remote.and_then(|remote| remote.chunks(file_id));
        let settles_at = remote.map(|remote| remote.opened() + OFFERS_ALONE_AFTER);
        let settled = settles_at.is_some_and(|at| at <= self.now);
        let window = if self.uploads.offers().spread_out(file_id) {
            None
        } else {
            match (uploads::other_downloader(&self.remotes, conn, file_id), settled) {
                (true, _) => Some(OFFER_WINDOW_CHUNKS),
                (false, false) => {
                    if let Some(at) = settles_at {
                        self.uploads.offers_mut().settles_at(conn, file_id, at);
                    }
                    Some(OFFER_WINDOW_ALONE_CHUNKS)
                }
                (false, true) => None,
            }
        };
        let chunks = self.uploads.offers_mut().top_up(conn, ours, holds, window, &mut self.rng);
        if !chunks.is_empty() {
            self.send(conn, Message::Haves { file_id, chunks });
        }
    }
}

/// Routing to and from peer exchange (`pex`: `Pex` decides, `Peer` sends and connects).
impl Peer {
    /// Sends this round's `Peers` messages, if the round is due.
    pub(super) fn pex_timeout(&mut self) {
        let tracker_ready = !self.tracker.ready_conns().is_empty();
        for (conn, file_id, peers) in self.pex.round(self.now, &self.remotes, tracker_ready, &mut self.rng) {
            self.send(conn, Message::Peers { file_id, peers });
        }
    }

    /// A remote named other peers of `file_id`: connect to them as to holders a tracker named.
    pub(super) fn on_peers(&mut self, conn: ConnId, file_id: FileId, peers: Vec<PeerAddr>) {
        let fetching = self.files.get(&file_id).is_some_and(|entry| entry.is_fetching());
        let mesh = (&self.remotes, !self.tracker.ready_conns().is_empty());
        match self.pex.heard(self.now, (conn, file_id), peers.len(), fetching, mesh) {
            Heard::TooLong => self.violation(conn, format!("peers message naming {} peers", peers.len())),
            Heard::Ignore => {}
            Heard::Use(most) => {
                for peer in peers.into_iter().filter(|peer| peer.addr.port() != 0).take(most) {
                    self.connect_for(peer, file_id);
                }
            }
        }
    }
}

/// Routing of the control commands (`control`: pause, resume, remove).
impl Peer {
    /// Refuses a control command the peer's state does not allow.
    fn check_control(&self, command: &Command) -> Result<(), CommandError> {
        let file_id = match command {
            Command::Pause { file_id } | Command::Resume { file_id } | Command::Remove { file_id } => file_id,
            Command::Share { .. } | Command::Get { .. } | Command::Leave => return Ok(()),
        };
        let Some(entry) = self.files.get(file_id) else {
            return Err(if self.store_work.is_removing(file_id) {
                CommandError::Removing
            } else {
                CommandError::UnknownFile
            });
        };
        match (command, entry.download().map(|download| download.phase())) {
            (Command::Pause { .. }, Some(Phase::Fetching)) | (Command::Resume { .. }, Some(Phase::Paused)) => Ok(()),
            (Command::Pause { .. }, _) => Err(CommandError::NotFetching),
            (Command::Resume { .. }, _) => Err(CommandError::NotPaused),
            _ => Ok(()),
        }
    }

    /// Pauses the download `file_id` (checked to be fetching).
    fn pause(&mut self, file_id: FileId) {
        let Some(download) = self.files.get_mut(&file_id).and_then(FileEntry::download_mut) else { return };
        if download.pause() {
            self.release_everywhere(file_id);
        }
    }

    /// Resumes the paused download `file_id`: it asks the trackers for holders at once and
    /// requests from the remotes it knows.
    fn resume(&mut self, file_id: FileId) {
        let now = self.now;
        let Some(download) = self.files.get_mut(&file_id).and_then(FileEntry::download_mut) else { return };
        if download.resume() {
            download.locate_mut().ask_soon(now);
            self.locate_due();
            self.scheduler().schedule_all();
        }
    }

    /// Removes `file_id` (see the module docs).
    fn remove(&mut self, file_id: FileId) {
        if !self.files.contains_key(&file_id) {
            return;
        }
        self.release_everywhere(file_id);
        self.flush_haves();
        self.files.remove(&file_id);
        self.lists.forget_file(file_id);
        for conn in self.tracker.open_conns() {
            self.send(conn, Message::Leave { file_id: Some(file_id) });
        }
        self.forget_exchanges(file_id);
        if self.store_work.remove(file_id) {
            self.event(Event::Removed { file_id });
        }
    }

    /// Ends the exchange of `file_id` with every remote: each that heard of our chunks or told
    /// us of its own hears we do not have the file (and stops asking us for it), and our record
    /// of its chunks goes, so a later download of the file starts the exchange over.
    fn forget_exchanges(&mut self, file_id: FileId) {
        let conns: Vec<ConnId> = self.remotes.keys().copied().collect();
        for conn in conns {
            let Some(remote) = self.remotes.get_mut(&conn) else { continue };
            let told = remote.has_our_bitfield(file_id);
            remote.unwant(file_id);
            let heard = self.remotes.forget_file(&conn, file_id).is_some();
            if told || heard {
                self.send(conn, Message::error(Some(file_id), ErrorCode::UnknownFile, "removed here"));
            }
        }
    }

    /// Releases every chunk of `file_id` assigned to a remote, cancelling its requests.
    fn release_everywhere(&mut self, file_id: FileId) {
        let conns: Vec<ConnId> = self.remotes.keys().copied().collect();
        for conn in conns {
            self.scheduler().release_file(conn, file_id);
        }
    }
}

impl Machine for Peer {
    fn handle(&mut self, now: Time, input: Input) {
        debug_assert!(now >= self.now, "time went backwards");
        self.now = self.now.max(now);
        match input {
            Input::Connected { conn, remote, peer_id } => {
                if self.tracker.owns(conn) {
                    self.on_tracker_connected(conn);
                } else {
                    self.on_remote_connected(conn, remote, peer_id);
                }
            }
            Input::Disconnected { conn } => {
                if self.tracker.owns(conn) {
                    self.on_tracker_lost(conn);
                } else {
                    self.on_remote_gone(conn);
                }
            }
            Input::Message { conn, message } => self.on_message(conn, message),
            Input::BadFrame { conn, error } => self.violation(conn, error.to_string()),
            Input::Sent { conn, data_frames } => self.on_sent(conn, data_frames),
            Input::Timeout => self.on_timeout(),
            Input::Completed(completion) => self.on_completed(completion),
        }
    }

    fn command(&mut self, now: Time, command: Command) -> Result<(), CommandError> {
        self.check_command(&command)?;
        debug_assert!(now >= self.now, "time went backwards");
        self.now = self.now.max(now);
        self.on_command(command);
        Ok(())
    }

    fn poll_output(&mut self) -> Option<Output> {
        let output = self.outputs.pop()?;
        // Counted as it leaves for the driver: a removal waits for the store work out there.
        self.store_work.asked(&output);
        Some(output)
    }

    fn poll_timeout(&self) -> Option<Time> {
        if self.left {
            return None;
        }
        let mut next = earlier(self.tracker.deadline(), self.uploads.wake_at());
        next = earlier(next, self.haves.due());
        if !self.remotes.is_empty() {
            next = earlier(next, Some(self.connections_check_at.min(self.pex.due_at())));
        }
        next = earlier(next, self.remotes.first_rest_end());
        for file in self.files.values().filter(|f| f.is_fetching()) {
            next = earlier(next, file.download().map(|d| d.locate().due_at()));
        }
        next
    }
}
