//! Per-connection state of a peer: one `Remote` per open peer-to-peer connection, and the
//! table of them (`Remotes`), which owns the outbound connection policy: at most
//! `OUTBOUND_PEERS_MAX` connections opened here, `CONNECTIONS_MAX` in all, and an address that
//! failed to connect left alone for `REMOTE_RETRY_DELAY`. Which inbound connections are
//! accepted is `slots.rs`.
//!
//! A remote is first `Connecting` (outbound only), then `AwaitHello`, then `Ready`. Only a ready
//! remote exchanges bitfields, requests and data. It owns what we know of the other side's
//! chunks (one bitfield per file it told us about) and, privately to the scheduler, our
//! requests to it ([`Requests`]). Its state is private: callers read it through accessors and
//! change it through one method per step of the connection's life.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::bitfield::Bitfield;
use crate::ids::{ChunkIndex, ConnId, FileId, PeerId};
use crate::limits::{CONNECTIONS_MAX, INBOUND_COURTESY_TIMEOUT, OUTBOUND_PEERS_MAX, REMOTE_RETRY_DELAY};
use crate::small::{VecMap, VecSet};
use crate::time::Time;
use crate::wire::{Hello, PeerAddr};

use super::scheduler::Requests;

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// We asked the driver to connect.
    Connecting,
    /// Open; waiting for the other side's `Hello`.
    AwaitHello,
    /// Handshake done.
    Ready,
}

/// One open (or opening) peer-to-peer connection. Its state changes only through the
/// methods below, each one step of the connection's life (connected, handshake done, a
/// bitfield or `Haves` heard, a block exchanged).
#[derive(Debug)]
pub(super) struct Remote {
    /// The remote's serving address: the target for outbound connections, the source IP and
    /// announced port for inbound ones once its `Hello` arrived.
    addr: SocketAddr,
    /// The remote's id: as the tracker (or a remote) named it while an outbound connection
    /// opens, then as the remote's key proved it in the transport's handshake.
    peer_id: PeerId,
    /// Where the connection stands.
    stage: Stage,
    /// Whether we opened it.
    outbound: bool,
    /// Files to send our bitfield for once the handshake is done and the manifest is known.
    wanted: VecSet<FileId>,
    /// The remote's chunks, per file it sent a bitfield (or `Haves`) for.
    files: VecMap<FileId, Bitfield>,
    /// Files we sent our bitfield for on this connection.
    bitfield_sent: VecSet<FileId>,
    /// Files it told us it does not know: it is not asked for their manifest again.
    unknown: VecSet<FileId>,
    /// Our requests to it (the scheduler's state of the remote).
    requests: Requests,
    /// When it last gave a block we asked for or took one we served (or connected): the
    /// least useful inbound connection, idle for longest, makes way for a newcomer.
    useful_at: Time,
    /// When a frame last arrived.
    last_heard: Time,
    /// When the connection was opened (for the handshake timeout).
    opened: Time,
    /// Its `Hello` said it takes part in room calls (`Room`; see `uploads`).
    room_calls: bool,
    /// Its `Hello` said it takes `Pushed` block requests (see `Peer::first_offer_push`).
    takes_pushes: bool,
    /// Its `Hello` said it takes `Requests`: several block requests in one message.
    request_batches: bool,
    /// Its `Hello` said it answers `Withdraw` (see `Scheduler::stalled`).
    withdrawals: bool,
    /// Accepted beyond the inbound slots only to answer its first message after the handshake
    /// (see `slots`), after which the connection is closed.
    courtesy: Option<Courtesy>,
}

/// What a connection accepted beyond the inbound slots is answered (see `slots`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Courtesy {
    /// Its manifest ask, with the manifest.
    Manifest,
    /// Whatever file it names, with other peers of that file to connect to instead.
    Referral,
}

impl Remote {
    /// A connection we are opening to `addr`, whose id the tracker (or a remote) named, to
    /// exchange bitfields for `file_id`.
    pub fn outbound(addr: SocketAddr, peer_id: PeerId, file_id: FileId, now: Time) -> Remote {
        let mut remote = Remote::new(addr, peer_id, Stage::Connecting, true, now);
        remote.wanted.insert(file_id);
        remote
    }

    /// A connection the driver accepted from `addr`, whose key proved `peer_id`.
    pub fn inbound(addr: SocketAddr, peer_id: PeerId, now: Time) -> Remote {
        Remote::new(addr, peer_id, Stage::AwaitHello, false, now)
    }

    /// A connection the driver accepted from `addr` while every inbound slot is taken, kept
    /// only to answer its first message as `kind` says (see `slots`).
    pub fn courtesy(addr: SocketAddr, peer_id: PeerId, now: Time, kind: Courtesy) -> Remote {
        Remote { courtesy: Some(kind), ..Remote::inbound(addr, peer_id, now) }
    }

    fn new(addr: SocketAddr, peer_id: PeerId, stage: Stage, outbound: bool, now: Time) -> Remote {
        Remote {
            addr,
            peer_id,
            stage,
            outbound,
            wanted: VecSet::new(),
            unknown: VecSet::new(),
            files: VecMap::new(),
            bitfield_sent: VecSet::new(),
            requests: Requests::new(now),
            useful_at: now,
            last_heard: now,
            opened: now,
            room_calls: false,
            takes_pushes: false,
            request_batches: false,
            withdrawals: false,
            courtesy: None,
        }
    }

    /// The remote's serving address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it takes part in room calls: it is told when room in our upload line is free
    /// for it, and tells us when room in its own is free for us.
    pub fn room_calls(&self) -> bool {
        self.room_calls
    }

    /// Whether it takes `Pushed`: a block request we take on its behalf.
    pub fn takes_pushes(&self) -> bool {
        self.takes_pushes
    }

    /// Whether it takes `Requests`: the blocks we ask it for at once go in one message.
    pub fn request_batches(&self) -> bool {
        self.request_batches
    }

    /// Whether it answers `Withdraw`: whether a request withdrawn from it can still be served.
    pub fn withdrawals(&self) -> bool {
        self.withdrawals
    }

    /// The remote's id: named (outbound, still connecting) or proven.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// An identity for strike and sender bookkeeping.
    pub fn identity(&self) -> (PeerId, SocketAddr) {
        (self.peer_id, self.addr)
    }

    /// Whether we opened it.
    pub fn is_outbound(&self) -> bool {
        self.outbound
    }

    /// Whether the handshake is done (only then are bitfields, requests and data exchanged).
    pub fn is_ready(&self) -> bool {
        self.stage == Stage::Ready
    }

    /// Its id and serving address, when it may be named to other peers: it is ready and said
    /// where it serves.
    pub fn nameable(&self) -> Option<PeerAddr> {
        (self.is_ready() && self.addr.port() != 0).then(|| PeerAddr { peer_id: self.peer_id(), addr: self.addr })
    }

    /// How it is answered, if it was accepted beyond the inbound slots (only to answer its
    /// first message).
    pub fn courtesy_kind(&self) -> Option<Courtesy> {
        self.courtesy
    }

    /// Whether it was accepted beyond the inbound slots, only to answer its first message.
    pub fn is_courtesy(&self) -> bool {
        self.courtesy.is_some()
    }

    /// When the handshake times out: the connection opened, or (outbound) was connected, at
    /// the returned time; `None` once the handshake is done.
    pub fn handshake_since(&self) -> Option<Time> {
        (!self.is_ready()).then_some(self.opened)
    }

    /// When a courtesy connection is closed if it is still open, handshake done or not; `None`
    /// for the others.
    pub fn courtesy_deadline(&self) -> Option<Time> {
        self.courtesy.map(|_| self.opened + INBOUND_COURTESY_TIMEOUT)
    }

    /// When the connection opened (outbound: when it was connected).
    pub fn opened(&self) -> Time {
        self.opened
    }

    /// When a frame last arrived.
    pub fn last_heard(&self) -> Time {
        self.last_heard
    }

    /// When it last gave a block we asked for or took one we served.
    pub fn useful_at(&self) -> Time {
        self.useful_at
    }

    /// The remote's chunks of `file_id`, if it told us of the file.
    pub fn chunks(&self, file_id: FileId) -> Option<&Bitfield> {
        self.files.get(&file_id)
    }

    /// Every file it told us of, with its chunks, in id order.
    pub fn files(&self) -> impl Iterator<Item = (&FileId, &Bitfield)> {
        self.files.iter()
    }

    /// The files whose bitfields wait for the handshake or the manifest (see [`Remote::want`]).
    pub fn wanted_files(&self) -> impl Iterator<Item = FileId> + '_ {
        self.wanted.iter().copied()
    }

    /// Whether it may send us the manifest of `file_id`: it is ready, waits for our bitfield
    /// of the file and did not tell us it does not know the file.
    pub fn may_send_manifest(&self, file_id: FileId) -> bool {
        self.is_ready() && self.wants(file_id) && !self.unknown.contains(&file_id)
    }

    /// It told us it does not know `file_id`: it is not asked for the file's manifest again,
    /// until it tells us of chunks of the file.
    pub fn knows_not(&mut self, file_id: FileId) {
        self.unknown.insert(file_id);
    }

    /// Whether it waits for our bitfield of `file_id` (see [`Remote::want`]).
    pub fn wants(&self, file_id: FileId) -> bool {
        self.wanted.contains(&file_id)
    }

    /// Whether we sent it our bitfield of `file_id`.
    pub fn has_our_bitfield(&self, file_id: FileId) -> bool {
        self.bitfield_sent.contains(&file_id)
    }

    /// Our requests to it.
    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    /// Our requests to it, for the scheduler to change.
    pub fn requests_mut(&mut self) -> &mut Requests {
        &mut self.requests
    }

    /// A frame arrived at `now`.
    pub fn heard(&mut self, now: Time) {
        self.last_heard = now;
    }

    /// It gave a block we asked for, or took one we served, at `now`.
    pub fn useful(&mut self, now: Time) {
        self.useful_at = now;
    }

    /// The outbound connection opened at `now` and its key proved `proven`; the handshake
    /// starts. `Err` carries the id it was named by when the key proves another.
    pub fn connected(&mut self, proven: PeerId, now: Time) -> Result<(), PeerId> {
        debug_assert!(self.outbound && self.stage == Stage::Connecting, "only a dialled remote connects");
        if self.peer_id != proven {
            return Err(self.peer_id);
        }
        self.stage = Stage::AwaitHello;
        self.opened = now;
        self.last_heard = now;
        Ok(())
    }

    /// The handshake is done with `hello` (see `links::hello`); an inbound remote serves at
    /// the `listen_port` it announced (0: none), takes part in room calls, takes pushes, takes
    /// request batches and answers withdrawals if it said so. Returns the files to exchange bitfields for now.
    pub fn ready(&mut self, hello: &Hello) -> Vec<FileId> {
        if !self.outbound && hello.listen_port != 0 {
            self.addr = SocketAddr::new(self.addr.ip(), hello.listen_port);
        }
        self.room_calls = hello.room_calls;
        self.takes_pushes = hello.takes_pushes;
        self.request_batches = hello.request_batches;
        self.withdrawals = hello.withdrawals;
        self.stage = Stage::Ready;
        std::mem::take(&mut self.wanted).into_iter().collect()
    }

    /// Our bitfield of `file_id` goes out once the handshake is done and the manifest known.
    pub fn want(&mut self, file_id: FileId) {
        self.wanted.insert(file_id);
    }

    /// Takes `file_id` off the files waiting for our bitfield; whether it was there.
    pub fn unwant(&mut self, file_id: FileId) -> bool {
        self.wanted.remove(&file_id)
    }

    /// Records that our bitfield of `file_id` goes out now; `false` if it already went.
    pub fn send_bitfield(&mut self, file_id: FileId) -> bool {
        self.bitfield_sent.insert(file_id)
    }

    /// The remote's bitfield of `file_id` arrived; returns the one it replaces.
    fn set_chunks(&mut self, file_id: FileId, have: Bitfield) -> Option<Bitfield> {
        self.unknown.remove(&file_id);
        self.files.insert(file_id, have)
    }

    /// The remote holds `chunks` of `file_id` (of `chunk_count` chunks, each checked against
    /// it). Returns whether this is the first we hear of the file from it, and the chunks that
    /// are new.
    fn add_chunks(&mut self, file_id: FileId, chunk_count: u32, chunks: &[ChunkIndex]) -> (bool, Vec<ChunkIndex>) {
        let first = !self.files.contains_key(&file_id);
        if first {
            self.unknown.remove(&file_id);
        }
        let have = self.files.get_or_insert_with(file_id, || Bitfield::new(chunk_count));
        (first, chunks.iter().copied().filter(|p| have.set(*p)).collect())
    }

    /// The remote refused `chunk` of `file_id`: it no longer counts as holding it. Whether it
    /// did.
    fn drop_chunk(&mut self, file_id: FileId, chunk: ChunkIndex) -> bool {
        self.files.get_mut(&file_id).is_some_and(|have| have.unset(chunk))
    }

    /// The remote does not have `file_id` after all; returns the chunks it claimed. The
    /// exchange of the file with it is over: a bitfield it sends later starts it over.
    fn forget_file(&mut self, file_id: FileId) -> Option<Bitfield> {
        self.bitfield_sent.remove(&file_id);
        self.files.remove(&file_id)
    }
}

/// How many remotes hold each chunk of one file, kept as their bitfields change.
#[derive(Debug, Default)]
struct Held {
    /// Remotes that told us of the file (its entry goes with the last of them).
    remotes: u32,
    /// Per chunk, the remotes holding it (at most `CONNECTIONS_MAX`: two bytes each).
    counts: Vec<u16>,
}

/// The open (or opening) peer-to-peer connections; see the module docs for the policy.
#[derive(Debug, Default)]
pub(super) struct Remotes {
    by_conn: ByConn,
    /// Per file some remote told us of, how many remotes hold each chunk: the rarity the upload
    /// side orders a seeded file's requests by is read here instead of being counted over every
    /// remote (thousands) at each look. Only the methods below change a remote's chunks, and
    /// each keeps this in step. Bounded by the files we know (a bitfield or `Haves` is taken
    /// only for a file whose manifest we have) times their chunks.
    held: VecMap<FileId, Held>,
    /// Addresses that recently failed to connect, with when they may be tried again.
    retry_at: BTreeMap<SocketAddr, Time>,
    /// Every resting remote's rest end (see [`Requests::resting_until`]), earliest first: the
    /// peer's next wake-up and the rests that are over are read here, not by a walk over
    /// every connection after each input.
    rests: VecSet<(Time, ConnId)>,
}

impl Remotes {
    /// No connection.
    pub fn new() -> Remotes {
        Remotes::default()
    }

    /// The connection `conn`, if open.
    pub fn get(&self, conn: &ConnId) -> Option<&Remote> {
        self.by_conn.get(conn)
    }

    /// The connection `conn`, if open.
    pub fn get_mut(&mut self, conn: &ConnId) -> Option<&mut Remote> {
        self.by_conn.get_mut(conn)
    }

    /// Whether `conn` is open.
    pub fn contains_key(&self, conn: &ConnId) -> bool {
        self.by_conn.contains_key(conn)
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }

    /// Every connection, in `ConnId` order.
    pub fn iter(&self) -> Iter<'_> {
        self.by_conn.entries.iter().map(pair)
    }

    /// The connections after `after` (all when `None`), in `ConnId` order.
    pub fn iter_after(&self, after: Option<ConnId>) -> Iter<'_> {
        let entries = &self.by_conn.entries;
        let start = after.map_or(0, |after| entries.partition_point(|(conn, _)| *conn <= after));
        entries[start..].iter().map(pair)
    }

    /// Every connection id, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &ConnId> + DoubleEndedIterator + Clone {
        self.by_conn.entries.iter().map(|(conn, _)| conn)
    }

    /// Every connection, in `ConnId` order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &Remote> + DoubleEndedIterator + Clone {
        self.by_conn.entries.iter().map(|(_, remote)| remote)
    }

    /// Forgets `conn`.
    pub fn remove(&mut self, conn: &ConnId) -> Option<Remote> {
        let remote = self.by_conn.remove(conn)?;
        if let Some(until) = remote.requests.resting_until() {
            self.rests.remove(&(until, *conn));
        }
        for (file_id, have) in remote.files() {
            count_holder(&mut self.held, *file_id, have, false);
        }
        Some(remote)
    }

    /// `conn`'s bitfield of `file_id` arrived; returns the one it replaces (`None` also when
    /// `conn` is not open).
    pub fn set_chunks(&mut self, conn: &ConnId, file_id: FileId, have: Bitfield) -> Option<Bitfield> {
        let remote = self.by_conn.get_mut(conn)?;
        count_holder(&mut self.held, file_id, &have, true);
        let old = remote.set_chunks(file_id, have);
        if let Some(old) = &old {
            count_holder(&mut self.held, file_id, old, false);
        }
        old
    }

    /// `conn` holds `chunks` of `file_id` (of `chunk_count` chunks, each checked against it).
    /// Returns whether this is the first we hear of the file from it, and the chunks that are
    /// new; `None` when `conn` is not open.
    pub fn add_chunks(
        &mut self,
        conn: &ConnId,
        file_id: FileId,
        chunk_count: u32,
        chunks: &[ChunkIndex],
    ) -> Option<(bool, Vec<ChunkIndex>)> {
        let remote = self.by_conn.get_mut(conn)?;
        let (first, new) = remote.add_chunks(file_id, chunk_count, chunks);
        let held = self.held.get_or_insert_with(file_id, Held::default);
        held.remotes += u32::from(first);
        for chunk in &new {
            count_chunk(held, *chunk, true);
        }
        Some((first, new))
    }

    /// `conn` refused `chunk` of `file_id`: it no longer counts as holding it. Whether it did.
    pub fn drop_chunk(&mut self, conn: &ConnId, file_id: FileId, chunk: ChunkIndex) -> bool {
        let dropped = self.by_conn.get_mut(conn).is_some_and(|r| r.drop_chunk(file_id, chunk));
        if let Some(held) = self.held.get_mut(&file_id).filter(|_| dropped) {
            count_chunk(held, chunk, false);
        }
        dropped
    }

    /// `conn` does not have `file_id` after all; returns the chunks it claimed. The exchange
    /// of the file with it is over: a bitfield it sends later starts it over.
    pub fn forget_file(&mut self, conn: &ConnId, file_id: FileId) -> Option<Bitfield> {
        let old = self.by_conn.get_mut(conn)?.forget_file(file_id)?;
        count_holder(&mut self.held, file_id, &old, false);
        Some(old)
    }

    /// `conn`'s rest end moved from `old` to `new` (the scheduler changed it).
    pub fn rest_changed(&mut self, conn: ConnId, old: Option<Time>, new: Option<Time>) {
        if let Some(old) = old {
            self.rests.remove(&(old, conn));
        }
        if let Some(new) = new {
            self.rests.insert((new, conn));
        }
    }

    /// The earliest rest end, over or not.
    pub fn first_rest_end(&self) -> Option<Time> {
        self.rests.iter().next().map(|(until, _)| *until)
    }

    /// The remotes whose rest is over at `now`, in `ConnId` order.
    pub fn rests_over(&self, now: Time) -> Vec<ConnId> {
        let mut over: Vec<ConnId> = self.rests.iter().take_while(|(until, _)| *until <= now).map(|(_, c)| *c).collect();
        over.sort_unstable();
        over
    }

    /// How many remotes told us they hold `chunk` of `file_id`.
    pub fn holders(&self, file_id: FileId, chunk: ChunkIndex) -> usize {
        let held = self.held.get(&file_id);
        let count = held.and_then(|h| h.counts.get(chunk.as_usize())).map_or(0, |count| usize::from(*count));
        debug_assert_eq!(
            count,
            self.values().filter(|r| r.chunks(file_id).is_some_and(|have| have.has(chunk))).count(),
            "holder count of {chunk} out of step with the remotes' chunks"
        );
        count
    }

    /// The slowest rate at which any remote delivered our requests (zero while none was
    /// measured): what a remote that has delivered nothing yet is expected to manage.
    pub fn slowest_delivery(&self) -> u64 {
        self.values().map(|r| r.requests().bytes_per_s()).filter(|rate| *rate > 0).min().unwrap_or(0)
    }

    /// The connections whose handshake is done.
    pub fn ready(&self) -> Vec<ConnId> {
        self.iter().filter(|(_, r)| r.is_ready()).map(|(c, _)| *c).collect()
    }

    /// The connections to `peer_id`.
    pub fn of_peer(&self, peer_id: PeerId) -> Vec<ConnId> {
        self.iter().filter(|(_, r)| r.peer_id == peer_id).map(|(c, _)| *c).collect()
    }

    /// A connection to `peer_id` or to `addr`, if one is open.
    pub fn find(&self, peer_id: PeerId, addr: SocketAddr) -> Option<ConnId> {
        self.iter().find(|(_, r)| r.peer_id == peer_id || r.addr == addr).map(|(c, _)| *c)
    }

    /// Whether a connection to `addr` may be opened at `now`: under the caps, and `addr` did
    /// not fail within [`REMOTE_RETRY_DELAY`].
    pub fn may_open(&self, addr: SocketAddr, now: Time) -> bool {
        let outbound = self.values().filter(|r| r.outbound).count();
        let retry_ok = self.retry_at.get(&addr).is_none_or(|t| *t <= now);
        outbound < OUTBOUND_PEERS_MAX && self.by_conn.len() < CONNECTIONS_MAX && retry_ok
    }

    /// Records a connection being opened (see [`Remotes::may_open`]).
    pub fn open(&mut self, conn: ConnId, remote: Remote) {
        self.retry_at.remove(&remote.addr);
        self.insert(conn, remote);
    }

    /// Records an accepted connection (see `slots::admit`).
    pub fn accept(&mut self, conn: ConnId, remote: Remote) {
        self.insert(conn, remote);
    }

    fn insert(&mut self, conn: ConnId, remote: Remote) {
        for (file_id, have) in remote.files() {
            count_holder(&mut self.held, *file_id, have, true);
        }
        if let Some(old) = self.by_conn.insert(conn, remote) {
            debug_assert!(false, "{conn} opened twice");
            for (file_id, have) in old.files() {
                count_holder(&mut self.held, *file_id, have, false);
            }
        }
    }

    /// Leaves `addr` alone for a while after a failed or refused connection at `now`. Expired
    /// entries are dropped here, so the map holds only addresses that failed recently.
    pub fn back_off(&mut self, addr: SocketAddr, now: Time) {
        self.retry_at.retain(|_, until| *until > now);
        self.retry_at.insert(addr, now + REMOTE_RETRY_DELAY);
    }
}

/// The remotes by connection: a vector sorted by `ConnId`, walked in order as one block, and a
/// hash index of each connection's place in it. Every message looks its remote up here first:
/// one probe of the index reads a line or two, where a search of an ordered tree reads a cold
/// node at each level. Connections open and close far less often than messages arrive, so
/// renumbering the places behind an insertion or a removal is cheap.
#[derive(Debug, Default)]
struct ByConn {
    entries: Vec<(ConnId, Remote)>,
    /// Where each connection of `entries` is.
    index: ConnIndex,
}

/// Remotes in `ConnId` order, as `(conn, remote)`.
pub(super) type Iter<'a> =
    std::iter::Map<std::slice::Iter<'a, (ConnId, Remote)>, fn(&(ConnId, Remote)) -> (&ConnId, &Remote)>;

fn pair((conn, remote): &(ConnId, Remote)) -> (&ConnId, &Remote) {
    (conn, remote)
}

/// A hash map, which the workspace otherwise forbids for its random iteration order: this one
/// is never iterated (order comes from `ByConn::entries`), and its hasher's seed is fixed.
#[allow(clippy::disallowed_types)]
type ConnIndex = std::collections::HashMap<ConnId, usize, foldhash::fast::FixedState>;

impl ByConn {
    fn get(&self, conn: &ConnId) -> Option<&Remote> {
        self.index.get(conn).map(|at| &self.entries[*at].1)
    }

    fn get_mut(&mut self, conn: &ConnId) -> Option<&mut Remote> {
        self.index.get(conn).map(|at| &mut self.entries[*at].1)
    }

    fn contains_key(&self, conn: &ConnId) -> bool {
        self.index.contains_key(conn)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds or replaces `conn`'s remote; returns the one replaced.
    fn insert(&mut self, conn: ConnId, remote: Remote) -> Option<Remote> {
        if let Some(at) = self.index.get(&conn) {
            return Some(std::mem::replace(&mut self.entries[*at].1, remote));
        }
        let at = self.entries.partition_point(|(c, _)| *c < conn);
        self.entries.insert(at, (conn, remote));
        self.renumber(at);
        None
    }

    fn remove(&mut self, conn: &ConnId) -> Option<Remote> {
        let at = self.index.remove(conn)?;
        let (_, remote) = self.entries.remove(at);
        self.renumber(at);
        Some(remote)
    }

    /// Records the places of the entries from `from` on, which moved.
    fn renumber(&mut self, from: usize) {
        for (at, (conn, _)) in self.entries.iter().enumerate().skip(from) {
            self.index.insert(*conn, at);
        }
    }
}

/// A remote's chunks `have` of `file_id` start (`holds`) or stop counting.
fn count_holder(held: &mut VecMap<FileId, Held>, file_id: FileId, have: &Bitfield, holds: bool) {
    let entry = held.get_or_insert_with(file_id, Held::default);
    entry.remotes = if holds { entry.remotes.saturating_add(1) } else { entry.remotes.saturating_sub(1) };
    for chunk in have.iter() {
        count_chunk(entry, chunk, holds);
    }
    if entry.remotes == 0 {
        held.remove(&file_id);
    }
}

/// One more (`holds`) or one fewer remote holds `chunk`.
fn count_chunk(held: &mut Held, chunk: ChunkIndex, holds: bool) {
    let at = chunk.as_usize();
    if held.counts.len() <= at {
        held.counts.resize(at + 1, 0);
    }
    let count = &mut held.counts[at];
    *count = if holds { count.saturating_add(1) } else { count.saturating_sub(1) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_address_waits_out_its_back_off_and_outbound_connections_are_capped() {
        let mut remotes = Remotes::new();
        let addr: SocketAddr = "10.0.0.1:1".parse().expect("an address");
        assert!(remotes.may_open(addr, Time::ZERO));
        remotes.back_off(addr, Time::ZERO);
        assert!(!remotes.may_open(addr, Time::ZERO + REMOTE_RETRY_DELAY / 2), "backing off");
        assert!(remotes.may_open(addr, Time::ZERO + REMOTE_RETRY_DELAY));
        for n in 0..OUTBOUND_PEERS_MAX as u64 {
            let other = SocketAddr::from(([10, 0, 1, 1], 1000 + n as u16));
            remotes.open(
                ConnId::Outbound(n),
                Remote::outbound(other, PeerId([1; 16]), FileId(crate::ids::Digest([1; 32])), Time::ZERO),
            );
        }
        assert!(!remotes.may_open("10.0.0.2:1".parse().expect("an address"), Time::ZERO), "at the cap");
    }

    #[test]
    fn remotes_are_found_by_connection_and_walked_in_connection_order_as_they_come_and_go() {
        let mut remotes = Remotes::new();
        let remote = |n: u8| Remote::inbound(SocketAddr::from(([10, 0, 1, n], 1)), PeerId([n; 16]), Time::ZERO);
        let conns = [ConnId::Inbound(5), ConnId::Outbound(9), ConnId::Inbound(1), ConnId::Outbound(2)];
        for (n, conn) in (1..).zip(conns) {
            remotes.accept(conn, remote(n));
        }
        remotes.remove(&ConnId::Inbound(5));
        remotes.accept(ConnId::Inbound(3), remote(9));
        let mut sorted = vec![ConnId::Outbound(9), ConnId::Inbound(1), ConnId::Outbound(2), ConnId::Inbound(3)];
        sorted.sort_unstable();
        assert_eq!(remotes.keys().copied().collect::<Vec<_>>(), sorted);
        for (conn, n) in
            [(ConnId::Outbound(9), 2), (ConnId::Inbound(1), 3), (ConnId::Outbound(2), 4), (ConnId::Inbound(3), 9)]
        {
            assert_eq!(remotes.get(&conn).map(Remote::peer_id), Some(PeerId([n; 16])), "{conn}");
        }
        assert!(remotes.get(&ConnId::Inbound(5)).is_none());
        let after: Vec<ConnId> = remotes.iter_after(Some(sorted[1])).map(|(conn, _)| *conn).collect();
        assert_eq!(after, sorted[2..]);
    }

    /// The holder counts, chunk by chunk, against a walk over every remote's chunks.
    fn assert_counts_walk(remotes: &Remotes, file_id: FileId, chunks: u32) -> Vec<usize> {
        (0..chunks)
            .map(|p| {
                let chunk = ChunkIndex(p);
                let walked = remotes.values().filter(|r| r.chunks(file_id).is_some_and(|h| h.has(chunk))).count();
                assert_eq!(remotes.holders(file_id, chunk), walked, "chunk {p}");
                walked
            })
            .collect()
    }

    #[test]
    fn only_a_remote_that_told_us_it_does_not_know_a_file_is_not_asked_its_manifest_until_it_holds_chunks() {
        let file_id = FileId(crate::ids::Digest([2; 32]));
        let mut remotes = Remotes::new();
        let conn = ConnId::Inbound(0);
        let addr = SocketAddr::from(([10, 0, 0, 1], 1000));
        remotes.accept(conn, Remote::inbound(addr, PeerId([1; 16]), Time::ZERO));
        let remote = remotes.get_mut(&conn).expect("accepted");
        remote.ready(&crate::wire::Hello::new(crate::wire::Role::Peer, PeerId([1; 16]), 1000));
        remote.want(file_id);
        assert!(remotes.get(&conn).is_some_and(|r| r.may_send_manifest(file_id)));
        // Our own removal of the file forgets its exchange, not what the remote knows.
        remotes.forget_file(&conn, file_id);
        assert!(remotes.get(&conn).is_some_and(|r| r.may_send_manifest(file_id)));
        remotes.get_mut(&conn).expect("accepted").knows_not(file_id);
        assert!(!remotes.get(&conn).is_some_and(|r| r.may_send_manifest(file_id)));
        // Chunks of the file it tells us of later show it has come to know it.
        remotes.set_chunks(&conn, file_id, Bitfield::new(4));
        assert!(remotes.get(&conn).is_some_and(|r| r.may_send_manifest(file_id)));
        remotes.get_mut(&conn).expect("accepted").knows_not(file_id);
        remotes.forget_file(&conn, file_id);
        remotes.add_chunks(&conn, file_id, 4, &[ChunkIndex(1)]);
        assert!(remotes.get(&conn).is_some_and(|r| r.may_send_manifest(file_id)));
    }

    #[test]
    fn holder_counts_follow_bitfields_haves_refusals_forgets_and_closes() {
        let file_id = FileId(crate::ids::Digest([2; 32]));
        let other = FileId(crate::ids::Digest([3; 32]));
        let mut remotes = Remotes::new();
        for n in 0..3u8 {
            let addr = SocketAddr::from(([10, 0, 0, n + 1], 1000));
            remotes.accept(ConnId::Inbound(u64::from(n)), Remote::inbound(addr, PeerId([n; 16]), Time::ZERO));
        }
        let (a, b, c) = (ConnId::Inbound(0), ConnId::Inbound(1), ConnId::Inbound(2));
        remotes.set_chunks(&a, file_id, Bitfield::full(4));
        let mut some = Bitfield::new(4);
        some.set(ChunkIndex(1));
        remotes.set_chunks(&b, file_id, some);
        remotes.set_chunks(&b, other, Bitfield::full(4));
        assert_eq!(assert_counts_walk(&remotes, file_id, 4), [1, 2, 1, 1]);
        assert_eq!(remotes.add_chunks(&c, file_id, 4, &[ChunkIndex(3)]), Some((true, vec![ChunkIndex(3)])));
        assert_eq!(
            remotes.add_chunks(&b, file_id, 4, &[ChunkIndex(1), ChunkIndex(3)]),
            Some((false, vec![ChunkIndex(3)]))
        );
        assert_eq!(assert_counts_walk(&remotes, file_id, 4), [1, 2, 1, 3]);
        assert!(remotes.drop_chunk(&a, file_id, ChunkIndex(3)));
        assert!(!remotes.drop_chunk(&a, file_id, ChunkIndex(3)), "dropped already");
        assert_eq!(assert_counts_walk(&remotes, file_id, 4), [1, 2, 1, 2]);
        // A new bitfield replaces the old one's counts.
        remotes.set_chunks(&a, file_id, Bitfield::new(4));
        assert_eq!(assert_counts_walk(&remotes, file_id, 4), [0, 1, 0, 2]);
        assert!(remotes.forget_file(&b, file_id).is_some());
        assert_eq!(assert_counts_walk(&remotes, file_id, 4), [0, 0, 0, 1]);
        remotes.remove(&c);
        assert_eq!(assert_counts_walk(&remotes, file_id, 4), [0, 0, 0, 0]);
        assert_eq!(assert_counts_walk(&remotes, other, 4), [1, 1, 1, 1]);
        remotes.remove(&b);
        remotes.remove(&a);
        assert!(remotes.held.is_empty(), "no remote tells of any file: nothing is kept");
    }
}
